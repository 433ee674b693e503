import Foundation

/// Which environment variables a plan may give its tool. A plan's `env` goes to whatever program the plan runs (an
/// allowlisted host program, a Flower client, a container's entrypoint), and many variables make a program load or
/// run something other than what the node admin allowed. Those names are refused by a built-in deny list that no
/// configuration can switch off; a node may in addition limit plans to an allowlist (`launchers.env_allowed`).
/// A refused name declines the task, naming the variable and why.
///
/// The list follows what the programs a node runs actually read:
/// - glibc's dynamic linker and libc: every `LD_*` (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, …) and the rest of the
///   variables glibc itself strips for set-uid programs (`unsecvars.h`: GCONV_PATH, GETCONF_DIR, GLIBC_TUNABLES,
///   HOSTALIASES, LOCALDOMAIN, LOCPATH, MALLOC_*, NIS_PATH, NLSPATH, RESOLV_HOST_CONF, RES_OPTIONS, TMPDIR, TZDIR):
///   they load shared objects (gconv modules, audit libraries), redirect name resolution or move temporary files;
///   `*_PRELOAD` and `DYLD_*` for other loaders and allocators.
/// - shells: PATH (which program a name runs), ENV and BASH_ENV (a file sh/bash source at start), SHELLOPTS,
///   BASHOPTS, BASH_* (including exported functions), PS4 (expanded under `set -x`), IFS, CDPATH, GLOBIGNORE,
///   PROMPT_COMMAND, SHELL, ZDOTDIR.
/// - interpreters and their module paths and start-up hooks: PYTHON* (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME,
///   PYTHONBREAKPOINT, …), PERL* (PERL5LIB, PERL5OPT, PERLLIB, PERL5DB), RUBY* and GEM_*, NODE_OPTIONS, NODE_PATH,
///   JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS, CLASSPATH, R_* (R_PROFILE, R_ENVIRON, R_LIBS, …), LUA_*,
///   TCLLIBPATH, PIP_*.
/// - libraries that load plugins or change trust: OPENSSL_* (OPENSSL_CONF loads engines), SSL_* and CURL_* and
///   REQUESTS_CA_BUNDLE (which CAs are trusted), *_PROXY (where traffic goes), GIT_* (GIT_SSH_COMMAND,
///   GIT_CONFIG_*, GIT_EXEC_PATH run programs), QT_PLUGIN_PATH, GST_PLUGIN_PATH, GIO_MODULE_DIR, TERMINFO*.
/// - programs other programs start: PAGER, EDITOR, VISUAL, BROWSER, LESSOPEN, LESSCLOSE, SSH_ASKPASS, SUDO_ASKPASS.
/// - where dotfiles are read from: HOME and XDG_* (~/.gitconfig, pip.conf, .Rprofile, …). The node sets HOME itself.
///
/// A few interpreter switches that only change buffering, encoding or hashing are allowed
/// (PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE, PYTHONHASHSEED, PYTHONIOENCODING, PYTHONUTF8).
public enum EnvironmentPolicy {
    struct Rule {
        enum Match { case exact(String), prefix(String), suffix(String) }
        var match: Match
        var reason: String

        func matches(_ upper: String) -> Bool {
            switch match {
            case .exact(let n): upper == n
            case .prefix(let p): upper.hasPrefix(p)
            case .suffix(let s): upper.hasSuffix(s)
            }
        }

        var label: String {
            switch match {
            case .exact(let n): n
            case .prefix(let p): "\(p)*"
            case .suffix(let s): "*\(s)"
            }
        }
    }

    /// Harmless switches of a denied family.
    static let harmless: Set<String> = ["PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                                        "PYTHONIOENCODING", "PYTHONUTF8"]

    static let rules: [Rule] = {
        let linker = "is read by the dynamic linker or libc and can load code into any program"
        let shell = "is read by shells and can run commands or change which program runs"
        let interp = "is read by an interpreter and can load or run code before the tool's own"
        let trust = "changes which certificates are trusted or where traffic goes"
        let plugin = "makes a library load plugins or run programs"
        let home = "decides where configuration files are read from (the node sets it)"
        func exact(_ names: [String], _ reason: String) -> [Rule] { names.map { Rule(match: .exact($0), reason: reason) } }
        func prefix(_ names: [String], _ reason: String) -> [Rule] { names.map { Rule(match: .prefix($0), reason: reason) } }
        func suffix(_ names: [String], _ reason: String) -> [Rule] { names.map { Rule(match: .suffix($0), reason: reason) } }
        return prefix(["LD_", "DYLD_", "MALLOC_"], linker)
            + suffix(["_PRELOAD"], linker)
            + exact(["GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH",
                     "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"], linker)
            + exact(["PATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GLOBIGNORE",
                     "PROMPT_COMMAND", "SHELL", "ZDOTDIR"], shell)
            + prefix(["BASH_"], shell)
            + prefix(["PYTHON", "PERL", "RUBY", "GEM_", "R_", "LUA_", "PIP_"], interp)
            + exact(["NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
                     "JDK_JAVA_OPTIONS", "CLASSPATH", "TCLLIBPATH"], interp)
            + prefix(["SSL_", "CURL_"], trust)
            + exact(["REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NODE_TLS_REJECT_UNAUTHORIZED"], trust)
            + suffix(["_PROXY"], trust)
            + prefix(["GIT_", "OPENSSL_", "TERMINFO"], plugin)
            + exact(["QT_PLUGIN_PATH", "GST_PLUGIN_PATH", "GIO_MODULE_DIR", "PAGER", "EDITOR", "VISUAL", "BROWSER",
                     "LESSOPEN", "LESSCLOSE", "SSH_ASKPASS", "SUDO_ASKPASS"], plugin)
            + exact(["HOME"], home)
            + prefix(["XDG_"], home)
    }()

    /// Nil when a plan may set `name`; else why not (for a `declined` event). `allowed`: the node's allowlist of exact
    /// names or `PREFIX*` entries; empty allows every name the deny list does not refuse.
    public static func problem(name: String, allowed: [String] = []) -> String? {
        let upper = name.uppercased()
        if !harmless.contains(upper), let rule = rules.first(where: { $0.matches(upper) }) {
            return "env.\(name): this node never passes \(rule.label) to a task (it \(rule.reason))"
        }
        if !allowed.isEmpty && !allowed.contains(where: { Self.allows($0, name) }) {
            return "env.\(name): is not in this node's launchers.env_allowed (\(allowed.joined(separator: ", ")))"
        }
        return nil
    }

    /// The first refused name of a plan's environment, in name order.
    public static func problem(in env: [String: String], allowed: [String] = []) -> String? {
        for name in env.keys.sorted() {
            if let p = problem(name: name, allowed: allowed) { return p }
        }
        return nil
    }

    static func allows(_ entry: String, _ name: String) -> Bool {
        if entry.hasSuffix("*") { return name.hasPrefix(String(entry.dropLast())) }
        return entry == name
    }
}
