/// The console's stylesheet and script, served by the daemon itself (no CDN: the console works offline).
enum ConsoleAssets {
    static let css = """
        body { font-family: system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
        header { background: #243b53; color: #fff; padding: 0.6em 1em; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
        header nav { display: flex; gap: 1em; align-items: center; margin-left: auto; }
        header a { color: #fff; }
        header .who { opacity: 0.85; }
        main { padding: 1em 1.5em; max-width: 1200px; }
        h1 { font-size: 1.4em; word-break: break-all; }
        h2 { font-size: 1.15em; margin-top: 1.4em; }
        h3 { font-size: 1em; word-break: break-all; }
        table { border-collapse: collapse; margin: 0.5em 0; background: #fff; }
        th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; font-size: 0.92em; }
        th { background: #eef2f6; }
        td.path { word-break: break-all; }
        .state { font-weight: 600; }
        .s-completed { color: #1a7f37; } .s-failed, .s-rejected { color: #cf222e; }
        .s-awaiting_approval { color: #9a6700; } .s-running, .s-staging_in, .s-staging_out { color: #0969da; }
        dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
        dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; word-break: break-all; }
        pre { background: #fff; border: 1px solid #d0d7de; padding: 0.6em; overflow: auto; max-height: 30em; white-space: pre-wrap; word-break: break-all; }
        .error { color: #cf222e; font-weight: 600; }
        .note { color: #57606a; }
        form label { display: block; margin: 0.5em 0; }
        textarea, input { font: inherit; width: 100%; max-width: 40em; box-sizing: border-box; }
        form.inline { display: inline; }
        button { font: inherit; padding: 0.3em 0.9em; margin-right: 0.5em; cursor: pointer; }
        #approve { background: #1a7f37; color: #fff; border: 1px solid #116329; }
        #reject { background: #cf222e; color: #fff; border: 1px solid #a40e26; }
        section.preview { margin: 1em 0; }
        section.preview img { max-width: 100%; border: 1px solid #d0d7de; }
        #login-form { max-width: 24em; }
        """

    /// Keeps the task list's states live: polls `/api/tasks` every 2 s and updates the cells (text only).
    static let js = """
        "use strict";
        (function () {
          var table = document.getElementById("tasks");
          var live = document.getElementById("live");
          if (!table || !live) { return; }
          function update() {
            fetch("/api/tasks", { credentials: "same-origin", cache: "no-store" }).then(function (r) {
              if (!r.ok) { throw new Error("HTTP " + r.status); }
              return r.json();
            }).then(function (rows) {
              var known = 0;
              rows.forEach(function (t) {
                table.querySelectorAll("td[data-state-for]").forEach(function (cell) {
                  if (cell.getAttribute("data-state-for") !== t.id) { return; }
                  known += 1;
                  if (cell.textContent !== t.state) {
                    cell.textContent = t.state;
                    cell.className = "state s-" + t.state.replace(/[^a-z_]/g, "");
                  }
                });
                table.querySelectorAll("td[data-updated-for]").forEach(function (cell) {
                  if (cell.getAttribute("data-updated-for") === t.id) { cell.textContent = t.updated; }
                });
              });
              var fresh = rows.length - known;
              live.textContent = "live, updated " + new Date().toLocaleTimeString() +
                (fresh > 0 ? "; " + fresh + " new task(s): reload to see them" : "");
            }).catch(function (e) { live.textContent = "not updating (" + e.message + ")"; });
          }
          update();
          setInterval(update, 2000);
        })();
        """
}
