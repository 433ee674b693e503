import FEMCore
import FEMJournal
import Foundation

/// The console's pages, rendered on the server. Every text a tool, a task or a file chose goes through `HTML.escape`
/// (`e` below); no page has inline script or style (the Content-Security-Policy forbids both).
enum ConsolePages {
    static func e(_ text: String) -> String { HTML.escape(text) }

    /// Who is looking, for the header and the forms.
    struct Viewer {
        var account: String
        var role: ConsoleSettings.Role
        var csrf: String
    }

    static func layout(_ title: String, viewer: Viewer?, nodeID: String, body: String) -> String {
        var nav = ""
        if let viewer {
            nav = """
                <nav><a href="/tasks">Tasks</a> <a href="/outputs">Outputs awaiting approval</a>
                <span class="who">\(e(viewer.account)) (\(viewer.role.rawValue))</span>
                <form method="post" action="/logout" class="inline">\(csrfField(viewer))<button type="submit" id="logout">Log out</button></form></nav>
                """
        }
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>\(e(title)) · fem-client \(e(nodeID))</title>
            <link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
            <body><header><strong>fem-client console</strong> · node \(e(nodeID))\(nav)</header>
            <main><h1>\(e(title))</h1>
            \(body)
            </main></body></html>
            """
    }

    static func csrfField(_ viewer: Viewer) -> String {
        "<input type=\"hidden\" name=\"csrf\" value=\"\(e(viewer.csrf))\">"
    }

    static func login(nodeID: String, error: String?) -> String {
        let message = error.map { "<p class=\"error\" id=\"login-error\">\(e($0))</p>" } ?? ""
        return layout("Log in", viewer: nil, nodeID: nodeID, body: """
            \(message)
            <form method="post" action="/login" id="login-form">
            <label>Account <input name="account" id="account" autocomplete="username" required></label>
            <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
            <button type="submit" id="login">Log in</button>
            </form>
            """)
    }

    static func message(_ title: String, _ text: String, viewer: Viewer?, nodeID: String) -> String {
        layout(title, viewer: viewer, nodeID: nodeID, body: "<p class=\"error\" id=\"message\">\(e(text))</p>")
    }

    static func toolName(_ rec: TaskRecord) -> String {
        let plan = rec.document["plan"]
        return [plan?["id"]?.stringValue, plan?["version"]?.stringValue].compactMap { $0 }.joined(separator: " ")
    }

    static func time(_ date: Date) -> String { String(FEMTime.format(date).prefix(19)).replacingOccurrences(of: "T", with: " ") }

    // MARK: Tasks

    static func tasks(_ rows: [TaskRecord], waiting: Int, viewer: Viewer, nodeID: String) -> String {
        var body = """
            <p>\(rows.count) most recent task(s); states update live (<span id="live">loading</span>).
            <a href="/outputs">\(waiting) output(s) awaiting approval</a>.</p>
            <table id="tasks"><thead><tr><th>Task</th><th>State</th><th>Tool</th><th>Received</th><th>Updated</th></tr></thead><tbody>
            """
        for r in rows {
            let id = e(r.taskID)
            body += "<tr data-task=\"\(id)\"><td><a href=\"/tasks/\(HTML.urlComponent(r.taskID))\">\(id)</a></td>"
                + "<td class=\"state s-\(r.state.rawValue)\" data-state-for=\"\(id)\">\(r.state.rawValue)</td>"
                + "<td>\(e(toolName(r)))</td><td>\(time(r.receivedAt))</td><td data-updated-for=\"\(id)\">\(time(r.updatedAt))</td></tr>\n"
        }
        body += "</tbody></table>"
        if rows.isEmpty { body += "<p>No tasks yet.</p>" }
        return layout("Tasks", viewer: viewer, nodeID: nodeID, body: body)
    }

    /// `GET /api/tasks`: what the page's script updates.
    static func tasksJSON(_ rows: [TaskRecord]) -> [UInt8] {
        let list: [JSONValue] = rows.map {
            .object(["id": .string($0.taskID), "state": .string($0.state.rawValue), "updated": .string(time($0.updatedAt))])
        }
        return Array((try? JSONEncoder.fem.encode(JSONValue.array(list))) ?? Data("[]".utf8))
    }

    // MARK: Timeline

    struct LogTail {
        var name: String
        var lines: [String]
        var missing: Bool
    }

    static func timeline(_ rec: TaskRecord, events: [TaskEvent], logs: [LogTail], viewer: Viewer, nodeID: String) -> String {
        var body = """
            <dl class="facts"><dt>State</dt><dd id="task-state">\(rec.state.rawValue)</dd>
            <dt>Execution</dt><dd>\(e(rec.executionID))</dd><dt>Tool</dt><dd>\(e(toolName(rec)))</dd>
            <dt>Launcher</dt><dd>\(e(rec.launcher))</dd>
            <dt>Received</dt><dd>\(time(rec.receivedAt))</dd><dt>Last change</dt><dd>\(time(rec.updatedAt))</dd>
            <dt>Elapsed</dt><dd>\(seconds(rec.updatedAt.timeIntervalSince(rec.receivedAt)))</dd></dl>
            """
        if rec.state == .awaitingApproval {
            body += "<p><a href=\"/outputs/\(HTML.urlComponent(rec.taskID))\" id=\"review-link\">Review the outputs awaiting approval</a></p>"
        }
        body += "<h2>Events</h2><table id=\"events\"><thead><tr><th>#</th><th>Time</th><th>+s</th><th>Kind</th><th>State</th><th>Message</th></tr></thead><tbody>"
        for ev in events {
            body += "<tr><td>\(ev.seq)</td><td>\(time(ev.time))</td><td>\(seconds(ev.time.timeIntervalSince(rec.receivedAt)))</td>"
                + "<td>\(ev.kind.rawValue)</td><td>\(ev.state.rawValue)</td><td>\(e(ev.detail.message ?? ""))</td></tr>\n"
        }
        body += "</tbody></table>"
        body += "<h2>Timings</h2><table id=\"timings\"><thead><tr><th>State</th><th>From</th><th>For</th></tr></thead><tbody>"
        let changes = events.filter { $0.kind == .state }
        for (i, ev) in changes.enumerated() {
            let end = i + 1 < changes.count ? changes[i + 1].time : (ev.state.isTerminal ? ev.time : Date())
            body += "<tr><td>\(ev.state.rawValue)</td><td>\(time(ev.time))</td><td>\(ev.state.isTerminal ? "" : seconds(end.timeIntervalSince(ev.time)))</td></tr>"
        }
        body += "</tbody></table>"
        for log in logs {
            body += "<h2>\(e(log.name)) (last \(log.lines.count) lines)</h2>"
            body += log.missing ? "<p>No log on this node (not written yet, or the sandbox was removed).</p>"
                : "<pre class=\"log\" id=\"log-\(e(log.name.replacingOccurrences(of: ".", with: "-")))\">\(e(log.lines.joined(separator: "\n")))</pre>"
        }
        return layout("Task \(rec.taskID)", viewer: viewer, nodeID: nodeID, body: body)
    }

    static func seconds(_ t: TimeInterval) -> String { String(format: "%.1f s", max(0, t)) }

    // MARK: Outputs

    static func outputs(_ rows: [(TaskRecord, Airlock.ManifestView?)], viewer: Viewer, nodeID: String) -> String {
        var body = "<table id=\"outputs\"><thead><tr><th>Task</th><th>Waiting since</th><th>Files</th><th>Bytes</th><th>Tool</th><th>Findings</th></tr></thead><tbody>"
        for (r, m) in rows {
            body += "<tr><td><a href=\"/outputs/\(HTML.urlComponent(r.taskID))\">\(e(r.taskID))</a></td><td>\(time(r.updatedAt))</td>"
                + "<td>\(m?.files.count ?? 0)</td><td>\(m?.bytes ?? 0)</td><td>\(e(m?.toolName ?? "?"))</td>"
                + "<td>\(m?.findings?.count ?? 0)</td></tr>\n"
        }
        body += "</tbody></table>"
        if rows.isEmpty { body += "<p id=\"none-waiting\">No outputs are waiting for approval.</p>" }
        return layout("Outputs awaiting approval", viewer: viewer, nodeID: nodeID, body: body)
    }

    enum Preview {
        case text(String, truncated: Bool)
        case table([[String]], truncated: Bool)
        case image
        case none(String)
    }

    struct Review {
        var rec: TaskRecord
        var manifest: Airlock.ManifestView
        var sha256: String
        var previews: [String: Preview]
        var decided: String?
    }

    static func review(_ r: Review, viewer: Viewer, nodeID: String) -> String {
        let m = r.manifest, id = r.rec.taskID
        let target = r.rec.document["stage_out"]
        let destination = target?["url"]?.stringValue ?? "none (the outputs stay on this node)"
        var body = """
            <dl class="facts"><dt>State</dt><dd id="task-state">\(r.rec.state.rawValue)</dd>
            <dt>Tool</dt><dd>\(e(m.toolName))</dd>
            <dt>Image</dt><dd>\(e(m.image_digest ?? m.image ?? "none"))</dd>
            <dt>Git commit</dt><dd>\(e(m.git_commit ?? "none"))</dd>
            <dt>Outcome</dt><dd>\(e(m.state))\(m.exit_code.map { ", exit \($0)" } ?? "")</dd>
            <dt>Destination</dt><dd id="destination">\(e(destination))\(target?["credentials"]?.stringValue.map { " (credentials " + e($0) + ")" } ?? "")\(target?["token"] != nil ? " (with the task's token)" : "")</dd>
            <dt>Manifest</dt><dd>sha256 <code id="manifest-sha">\(e(r.sha256))</code> (the decision is bound to it)</dd>
            <dt>Timeline</dt><dd><a href="/tasks/\(HTML.urlComponent(id))">events and logs</a></dd></dl>
            <h2>Files (\(m.files.count), \(m.bytes) bytes)</h2>
            <table id="files"><thead><tr><th>Path</th><th>Bytes</th><th>sha256</th></tr></thead><tbody>
            """
        for f in m.files {
            body += "<tr><td class=\"path\">\(e(f.path))</td><td>\(f.size)</td><td><code>\(e(f.sha256))</code></td></tr>\n"
        }
        body += "</tbody></table>"
        let findings = m.findings ?? []
        if !findings.isEmpty {
            body += "<h2>Findings of the output checks (\(findings.count))</h2><table id=\"findings\"><thead><tr><th>Check</th><th>File</th><th>Row</th><th>Column</th><th>Message</th></tr></thead><tbody>"
            for f in findings {
                body += "<tr><td>\(e(f.check))</td><td>\(e(f.file))</td><td>\(f.row.map(String.init) ?? "")</td>"
                    + "<td>\(e(f.column_name ?? f.column.map(String.init) ?? ""))</td><td>\(e(f.message))</td></tr>"
            }
            body += "</tbody></table>"
        }
        body += "<h2>Previews of the staged copies</h2>"
        if m.files.count > ConsoleFiles.maxPreviews {
            body += "<p class=\"note\">The first \(ConsoleFiles.maxPreviews) of \(m.files.count) files; read the others in "
                + "the staging folder or with <code>fem-client outputs show</code>.</p>"
        }
        for (i, f) in m.files.prefix(ConsoleFiles.maxPreviews).enumerated() {
            body += "<section class=\"preview\" id=\"preview-\(i)\"><h3>\(e(f.path))</h3>"
            switch r.previews[f.path] ?? .none("no preview") {
            case .text(let text, let truncated):
                body += "<pre>\(e(text))</pre>" + (truncated ? "<p class=\"note\">(first 64 KiB)</p>" : "")
            case .table(let rows, let truncated):
                body += "<table class=\"csv\">"
                for (n, row) in rows.enumerated() {
                    let cell = n == 0 ? "th" : "td"
                    body += "<tr>" + row.map { "<\(cell)>\(e($0))</\(cell)>" }.joined() + "</tr>"
                }
                body += "</table>" + (truncated ? "<p class=\"note\">(first \(rows.count) rows)</p>" : "")
            case .image:
                body += "<img alt=\"\(e(f.path))\" src=\"/outputs/\(HTML.urlComponent(id))/file?path=\(HTML.urlComponent(f.path))\">"
            case .none(let why):
                body += "<p class=\"note\">\(e(why))</p>"
            }
            body += "</section>"
        }
        body += "<h2>Decision</h2>"
        if let decided = r.decided {
            body += "<p id=\"decided\">Already decided: \(e(decided)).</p>"
        } else {
            if viewer.role != .steward {
                body += "<p class=\"note\">Your account's role is \(viewer.role.rawValue): deciding needs the steward role.</p>"
            }
            let override = findings.isEmpty ? "" : """
                <label>Override the findings (why these outputs may leave anyway)
                <textarea name="override" id="override" rows="2"></textarea></label>
                """
            body += """
                <form method="post" action="/outputs/\(HTML.urlComponent(id))/decide" id="decide-form">
                \(csrfField(viewer))<input type="hidden" name="manifest_sha256" value="\(e(r.sha256))">
                <label>Reason (required to reject) <textarea name="reason" id="reason" rows="2"></textarea></label>
                \(override)
                <button type="submit" name="decision" value="approve" id="approve">Approve: send the outputs</button>
                <button type="submit" name="decision" value="reject" id="reject">Reject: keep them on this node</button>
                </form>
                """
        }
        return layout("Review outputs of \(id)", viewer: viewer, nodeID: nodeID, body: body)
    }

    static func decided(_ id: String, message: String, viewer: Viewer, nodeID: String) -> String {
        layout("Decision recorded", viewer: viewer, nodeID: nodeID, body: """
            <p id="decision">\(e(message))</p>
            <p><a href="/tasks/\(HTML.urlComponent(id))" id="timeline-link">Follow the task</a> · <a href="/outputs">Other outputs</a></p>
            """)
    }
}
