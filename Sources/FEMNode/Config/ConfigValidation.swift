import FEMCore
import FEMLaunchers
import FEMStaging
import FEMTransport
import Foundation

/// Collects what is wrong, each naming its key.
struct ConfigValidator {
    var problems: [String] = []

    mutating func note(_ problem: String) { problems.append(problem) }

    mutating func range(_ name: String, _ value: Int, _ allowed: ClosedRange<Int>) {
        if !allowed.contains(value) {
            note("\(name): \(value) is out of range (\(allowed.lowerBound)…\(allowed.upperBound))")
        }
    }

    /// `[node.labels]`: keys are simple identifiers (constraints read them as `labels.<key>`), at most 64 of them;
    /// strings up to 256 characters, lists up to 64 items.
    mutating func labels(_ labels: [String: AttributeValue]) {
        if labels.count > 64 { note("node.labels: \(labels.count) labels; at most 64") }
        for (key, value) in labels.sorted(by: { $0.key < $1.key }) {
            let name = "node.labels.\(key)"
            if !Patterns.matches(#"^[A-Za-z_][A-Za-z0-9_]{0,63}$"#, key) {
                let shown = Patterns.matches(#"^[ -~]{1,64}$"#, key) ? "\"\(key)\"" : "(an unprintable key)"
                note("node.labels: the key \(shown) is not a simple identifier (a letter or _, then letters, digits or _; "
                     + "at most 64)")
                continue
            }
            func check(_ v: AttributeValue, _ at: String) {
                if case .string(let s) = v, s.count > 256 { note("\(at): the string is \(s.count) characters; at most 256") }
            }
            if case .list(let items) = value {
                if items.count > 64 { note("\(name): \(items.count) items; at most 64") }
                for (i, item) in items.enumerated() { check(item, "\(name)[\(i)]") }
            } else {
                check(value, name)
            }
        }
    }
}

/// The checks after decoding: ranges, formats, allowlists, and (with `brokerFiles`) the files the node will read.
/// Every problem is reported at once.
extension ConfigFile {
    func validate(brokerFiles: Bool) -> [String] {
        var v = ConfigValidator()
        node.validate(&v)
        broker.validate(&v)
        launchers.process.validate(&v)
        launchers.docker.validate(&v)
        launchers.flower.validate(&v)
        launchers.slurm.validate(&v)
        stageIn.validate(&v)
        sandboxes.validate(&v)
        outputs.validate(&v)
        journal.validate(&v)
        reporter.validate(&v)
        metrics.validate(&v)
        trust.validate(&v)
        console.validate(&v)

        for l in launchers.enabled where !NodeConfig.knownLaunchers.contains(l) {
            v.note("launchers.enabled: \"\(l)\" is not a launcher this build has (it has: "
                   + NodeConfig.knownLaunchers.joined(separator: ", ") + ")")
        }
        launcherProblems(&v)
        if let id = node.id, !Patterns.matches(#"^[a-z0-9][a-z0-9-]{0,62}$"#, id) {
            v.note("node.id: \"\(id)\" must be lowercase letters, digits and '-' (it names queues)")
        }
        if broker.orchestrators.isEmpty {
            v.note("broker.orchestrators: is empty, so this node would accept no task and no cancel; list the broker "
                   + "accounts of your orchestrators (femctl's login)")
        }
        for a in broker.orchestrators where !Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, a) {
            v.note("broker.orchestrators: \"\(TextEscaping.escaped(a))\" is not a broker account name (letters, digits, "
                   + "_ . @ -, at most 64)")
        }
        if let url = broker.url {
            do {
                _ = try BrokerURL.parse(url, password: nil, caFile: "", certFile: "", keyFile: "")
            } catch {
                v.note(error.description)
            }
        }
        if brokerFiles {
            for (name, path) in [("broker.ca_file", broker.caFile), ("broker.cert_file", broker.certFile),
                                 ("broker.key_file", broker.keyFile)] {
                if let path, !FileManager.default.isReadableFile(atPath: NodeConfig.absolutePath(path)) {
                    v.note("\(name): cannot read \(NodeConfig.absolutePath(path))")
                }
            }
        }
        for (name, list) in [("stage_in.git_allowed_urls", stageIn.gitAllowedURLs),
                             ("stage_in.file_allowed_urls", stageIn.fileAllowedURLs),
                             ("outputs.allowed_urls", outputs.allowedURLs)] {
            do {
                _ = try URLPolicy(list)
            } catch {
                v.note("\(name): \(error)")
            }
        }
        for (name, path) in [("stage_in.ca_file", stageIn.caFile), ("outputs.ca_file", outputs.caFile)] where !path.isEmpty {
            let ca = NodeConfig.absolutePath(path)
            if !FileManager.default.isReadableFile(atPath: ca) { v.note("\(name): cannot read \(ca)") }
        }
        for (name, argv) in hooks.sorted(by: { $0.key < $1.key }) {
            if let program = argv.first, !FileManager.default.isExecutableFile(atPath: program) {
                v.note("hooks.\(name): \(program) is not an executable file")
            }
        }
        datasetProblems(&v)
        return v.problems
    }

    /// Host launchers run only what the admin listed: `process` needs a non-empty allowlist of absolute paths, and
    /// `flower` an absolute interpreter; SuperLink entries must be host:port; env allowlist entries must be names.
    private func launcherProblems(_ v: inout ConfigValidator) {
        if launchers.enabled.contains("process") {
            let list = launchers.process.allowedExecutables
            if list.isEmpty {
                v.note("launchers.process.allowed_executables: must list the absolute paths of the programs "
                       + "host-process tasks may run while \"process\" is in launchers.enabled")
            }
            for p in list where !p.hasPrefix("/") {
                v.note("launchers.process.allowed_executables: \"\(p)\" is not an absolute path")
            }
        }
        let python = launchers.flower.python
        if launchers.enabled.contains("flower"), !python.hasPrefix("/") {
            v.note("launchers.flower.python: \"\(python)\" is not an absolute path (the interpreter Flower "
                   + "environments are made from, e.g. /usr/bin/python3)")
        }
        for entry in launchers.flower.allowedSuperlinks where HostPort.parse(entry) == nil {
            v.note("launchers.flower.allowed_superlinks: \"\(entry)\" is not host:port (e.g. "
                   + "\"superlink.example.org:9092\" or \"[2001:db8::1]:9092\")")
        }
        for entry in launchers.envAllowed where !Patterns.matches(#"^[A-Za-z_][A-Za-z0-9_]{0,127}\*?$"#, entry) {
            v.note("launchers.env_allowed: \"\(entry)\" is not a variable name (or NAME_PREFIX*)")
        }
    }

    private func datasetProblems(_ v: inout ConfigValidator) {
        for (id, d) in datasets.sorted(by: { $0.key < $1.key }) {
            let at = "datasets.\(id)"
            guard Patterns.matches(Patterns.datasetID, id) else {
                v.note("\(at): \"\(id)\" is not a valid dataset id")
                continue
            }
            for k in d.keys where k != "path" && k != "labels" {
                v.note("\(at).\(k): is not a known key (path, labels)")
            }
            guard let path = d.path, path.hasPrefix("/") else {
                if d.keys.contains("path") && d.path == nil { continue }  // not a string: already named
                v.note("\(at).path: is required and must be an absolute path")
                continue
            }
            if !FileManager.default.fileExists(atPath: path) { v.note("\(at).path: \(path) does not exist") }
        }
    }

    /// The datasets that passed validation.
    var validDatasets: [String: NodeConfig.Dataset] {
        var out: [String: NodeConfig.Dataset] = [:]
        for (id, d) in datasets {
            if let path = d.path { out[id] = NodeConfig.Dataset(path: path, labels: d.labels) }
        }
        return out
    }
}

extension LoginEntry {
    /// The login, its secret read from its file or from `environment` (the daemon's, injected). Problems name the
    /// entry and the key; a missing secret names the file or variable, never a value. Without `readSecrets` (local
    /// commands that never send anything) secrets are not read.
    func credential(tokens: Bool, environment: [String: String], readSecrets: Bool,
                    problems: inout [String]) -> Credential? {
        let allowed = Self.allowed(tokens: tokens)
        for k in keys where !allowed.contains(k) {
            problems.append("\(at).\(k): is not a known key (\(allowed.joined(separator: ", ")))")
        }
        let secretKeys = Self.secretKeys(tokens: tokens)
        let given = secretKeys.filter { keys.contains($0) }
        guard given.count == 1 else {
            problems.append("\(at): needs exactly one of \(secretKeys.joined(separator: ", "))")
            return nil
        }
        let key = given[0]
        let named: String?
        switch key {
        case "password_file": named = passwordFile
        case "password_env": named = passwordEnv
        case "token_file": named = tokenFile
        default: named = tokenEnv
        }
        guard let named else { return nil }  // not a string: already named
        let isToken = key.hasPrefix("token")
        if isToken && keys.contains("username") {
            problems.append("\(at).username: a token login has no username (use password_file for basic auth)")
        }
        if !isToken && username == nil && !keys.contains("username") {
            problems.append("\(at).username: is required with \(key)")
        }
        let source: SecretSource = key.hasSuffix("_env") ? .environment(named) : .file(NodeConfig.absolutePath(named))
        var secret = ""
        if readSecrets {
            do {
                secret = try source.read(field: "\(at).\(key)", environment: environment)
            } catch {
                problems.append(error.description)
            }
        } else {
            secret = (try? source.read(field: "\(at).\(key)", environment: environment)) ?? ""
        }
        var policy = URLPolicy(entries: [])
        if tokens {
            if let urls, !urls.isEmpty {
                do {
                    policy = try URLPolicy(urls)
                } catch {
                    problems.append("\(at).urls: \(error)")
                }
            } else if urls != nil || !keys.contains("urls") {
                problems.append("\(at).urls: is required: a non-empty array of the URL prefixes this credential may be "
                                + "sent to (\"https://git.example.org/team/\")")
            }
        }
        return Credential(username: isToken ? nil : username, secret: secret, urls: policy)
    }
}
