import Foundation

/// Reads tool plans and tasks from JSON, checking everything and reporting every problem at once.
/// Paths: a plan document's fields are under `plan.`; a task's own fields are at the top, its plan under `plan.`.
public enum DocumentReader {
    public enum Document: Sendable {
        case plan(ToolPlan)
        case task(TaskSpec)
    }

    /// A plan or a task, told apart by the presence of a `plan` field.
    public static func readAny(_ value: JSONValue, defaultTaskID: () -> String = { UUID().uuidString.lowercased() })
        throws -> Document {
        if value["plan"] != nil {
            return .task(try readTask(value, defaultTaskID: defaultTaskID))
        }
        return .plan(try readPlan(value))
    }

    public static func readPlan(_ value: JSONValue) throws -> ToolPlan {
        let log = IssueLog()
        let plan = plan(value, path: "plan", log: log)
        if let plan, log.issues.isEmpty { return plan }
        throw ValidationError(log.issues)
    }

    /// Reads a task. `defaultTaskID` supplies an id when the document has none (allowed on submit).
    public static func readTask(_ value: JSONValue, requireTaskID: Bool = false,
                                defaultTaskID: () -> String = { UUID().uuidString.lowercased() }) throws -> TaskSpec {
        let log = IssueLog()
        guard let f = Fields(value, path: "", log: log) else { throw ValidationError(log.issues) }
        let version = schemaVersion(f, supported: TaskSpec.supportedSchemaVersions)
        let taskID = f.string("task_id", required: requireTaskID, pattern: Patterns.taskID)
        let executionID = f.string("execution_id", required: true, pattern: Patterns.taskID)
        let plan = plan(f.raw("plan", required: true), path: "plan", log: log)
        var params: [String: JSONValue] = [:]
        var paramsReadable = true
        if let raw = f.raw("params", required: false) {
            if case .object(let o) = raw {
                params = o
            } else {
                log.add("params", "expected an object, got \(raw.typeName)")
                paramsReadable = false
            }
        }
        let timeout = f.int("timeout_seconds", min: 1)
        let stageOut = stageOut(f.object("stage_out"))
        let flower = flowerTask(f.object("flower"))
        let retry = RetrySpec.read(f.object("retry"))
        let attempt = f.int("attempt", min: 1, max: Int64(RetrySpec.maxAttempts)) ?? 1
        let pool = PoolTicket.read(f.object("pool"))
        // Alternatives (pool tasks): plans tried in order when the one before fails; the params fit each of them.
        var alternatives: [ToolPlan] = []
        for (p, item) in f.array("alternatives") ?? [] {
            if let alt = Self.plan(item, path: p, log: log) {
                alternatives.append(alt)
                if paramsReadable { checkParams(params, against: alt, log: log) }
            }
        }
        if alternatives.count > RetrySpec.maxAttempts {
            log.add("alternatives", "at most \(RetrySpec.maxAttempts) alternatives")
        }
        let constraints = constraintsText(f)
        let priority = f.int("priority", min: -1000, max: 1000)
        f.finish()
        if let plan {
            if paramsReadable { checkParams(params, against: plan, log: log) }
            if plan.launcher == "flower" && flower == nil && value["flower"] == nil {
                log.add("flower", "is required for a plan with launcher \"flower\" (the server address)")
            }
        }
        guard log.issues.isEmpty, let plan, let executionID, let version else { throw ValidationError(log.issues) }
        var task = TaskSpec(schemaVersion: version, taskID: taskID ?? defaultTaskID(), executionID: executionID,
                            plan: plan, params: params, timeoutSeconds: timeout, stageOut: stageOut, flower: flower,
                            retry: retry, attempt: attempt, pool: pool, alternatives: alternatives, priority: priority)
        task.constraints = constraints
        return task
    }

    static func schemaVersion(_ f: Fields, supported: [Int]) -> Int? {
        guard let raw = f.raw("schema_version", required: true) else { return nil }
        guard case .int(let v) = raw else {
            f.log.add(f.sub("schema_version"), "expected an integer, got \(raw.typeName)")
            return nil
        }
        guard supported.contains(Int(v)) else {
            f.log.add(f.sub("schema_version"), "version \(v) is not supported; this node accepts "
                      + supported.map(String.init).joined(separator: ", "))
            return nil
        }
        return Int(v)
    }

    static func plan(_ value: JSONValue?, path: String, log: IssueLog) -> ToolPlan? {
        guard let f = Fields(value, path: path, log: log) else { return nil }
        let version = schemaVersion(f, supported: ToolPlan.supportedSchemaVersions)
        let id = f.string("id", required: true, pattern: Patterns.planID)
        let toolVersion = f.string("version", required: true, pattern: Patterns.version)
        let description = f.string("description", nonEmpty: false)
        let launcher = f.string("launcher", required: true, allowed: ToolPlan.launchers)
        let image = f.string("image")
        let pull = f.string("pull_policy", allowed: PullPolicy.allCases.map(\.rawValue)).flatMap(PullPolicy.init)
        let source = source(f.object("source"))
        let command = command(f.object("command", required: true))
        var env: [String: String] = [:]
        if let e = f.object("env") {
            for key in e.values.keys.sorted() {
                if !Patterns.matches(Patterns.envName, key) {
                    _ = e.raw(key, required: false)
                    log.add(e.sub(key), "is not a valid environment variable name (letters, digits, _; FEM_ is "
                            + "reserved for the node)")
                } else if let v = e.string(key, placeholders: true, nonEmpty: false) {
                    env[key] = v
                }
            }
        }
        let inputs = f.stringArray("inputs", pattern: Patterns.datasetID, unique: true) ?? []
        var outputs: [OutputRule] = []
        for (p, item) in f.array("outputs") ?? [] {
            guard let o = Fields(item, path: p, log: log) else { continue }
            let pattern = o.string("pattern", required: true)
            if let pattern, let problem = Glob.problem(in: pattern) { log.add(o.sub("pattern"), problem) }
            let max = o.int("max_bytes", min: 1)
            o.finish()
            if let pattern { outputs.append(OutputRule(pattern: pattern, maxBytes: max.map(Int64.init))) }
        }
        var resources = Resources.none
        if let r = f.object("resources") {
            resources = Resources(cpus: r.number("cpus", exclusiveMin: 0), memoryMB: r.int("memory_mb", min: 4),
                                  gpus: r.int("gpus", min: 0), storageMB: r.int("storage_mb", min: 1),
                                  partition: r.string("partition", pattern: Patterns.slurmName),
                                  account: r.string("account", pattern: Patterns.slurmName),
                                  qos: r.string("qos", pattern: Patterns.slurmName))
            r.finish()
        }
        let network = f.string("network", allowed: NetworkMode.allCases.map(\.rawValue)).flatMap(NetworkMode.init)
        let timeout = f.int("timeout_seconds", min: 1)
        let flower = flowerPlan(f.object("flower"))
        let retry = RetrySpec.read(f.object("retry"))
        let constraints = constraintsText(f)
        let priority = f.int("priority", min: -1000, max: 1000)
        let signature = signature(f.object(PlanIdentity.signatureMember))
        f.finish()

        if launcher == "docker" && image == nil && f.values["image"] == nil {
            log.add(f.sub("image"), "is required when launcher is \"docker\"")
        }
        if launcher == "flower" && flower == nil && f.values["flower"] == nil {
            log.add(f.sub("flower"), "is required when launcher is \"flower\"")
        }
        if let command {
            checkArgs(command, plan: f, inputs: inputs, env: env)
        }
        guard let version, let id, let toolVersion, let launcher, let command else { return nil }
        var plan = ToolPlan(schemaVersion: version, id: id, version: toolVersion, description: description,
                            launcher: launcher, image: image, pullPolicy: pull, source: source, command: command,
                            env: env, inputs: inputs, outputs: outputs, resources: resources,
                            network: network ?? .none, timeoutSeconds: timeout, flower: flower, retry: retry,
                            priority: priority)
        plan.constraints = constraints
        plan.document = value
        plan.signature = signature
        return plan
    }

    /// `signature`: well-formed only (algorithm, key id, 64 bytes of base64); whether it verifies, and with which
    /// trusted key, is the node's trust policy's call.
    static func signature(_ f: Fields?) -> PlanSignature? {
        guard let f else { return nil }
        let algorithm = f.string("algorithm", required: true, allowed: PlanSignature.algorithms)
        let keyID = f.string("key_id", required: true, pattern: PlanSignature.keyIDPattern)
        var value: [UInt8]?
        if let raw = f.raw("value", required: true) {
            if case .string(let s) = raw, let data = Data(base64Encoded: s), data.count == 64 {
                value = Array(data)
            } else {
                f.log.add(f.sub("value"), "expected base64 of 64 bytes (an Ed25519 signature)")
            }
        }
        let signer = f.string("signer", nonEmpty: false)
        if let signer, signer.count > 256 || signer.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            f.log.add(f.sub("signer"), "at most 256 characters, no control characters")
        }
        f.finish()
        guard let algorithm, let keyID, let value else { return nil }
        return PlanSignature(algorithm: algorithm, keyID: keyID, value: value, signer: signer)
    }

    /// `constraints`: a non-empty string within the expression length limit. Its syntax is checked where it is
    /// evaluated (the node declines a task whose expression cannot be read, naming `constraints` and the column).
    static func constraintsText(_ f: Fields) -> String? {
        guard let text = f.string("constraints") else { return nil }
        guard text.utf8.count <= ConstraintExpression.maxLength else {
            f.log.add(f.sub("constraints"), "is \(text.utf8.count) bytes long; the limit is \(ConstraintExpression.maxLength)")
            return nil
        }
        return text
    }

    static func source(_ f: Fields?) -> PlanSource? {
        guard let f else { return nil }
        defer { f.finish() }
        let hasGit = f.values["git"] != nil
        let hasFiles = f.values["files"] != nil
        if hasGit == hasFiles {
            _ = f.raw("git", required: false)
            _ = f.raw("files", required: false)
            f.log.add(f.path, "must have exactly one of \"git\" or \"files\"")
            return nil
        }
        if let g = f.object("git") {
            let url = g.string("url", required: true)
            let ref = g.string("ref")
            let commit = g.string("commit", pattern: Patterns.commit)
            let creds = g.string("credentials", pattern: Patterns.credentialsRef)
            g.finish()
            guard let url else { return nil }
            return .git(GitSource(url: url, ref: ref, commit: commit, credentials: creds))
        }
        var files: [SourceFile] = []
        for (p, item) in f.array("files", nonEmpty: true) ?? [] {
            guard let o = Fields(item, path: p, log: f.log) else { continue }
            let url = o.string("url", required: true)
            let path = o.string("path", required: true)
            if let path, let problem = RelativePath.problem(path) { f.log.add(o.sub("path"), problem) }
            let sha = o.string("sha256", pattern: Patterns.sha256)
            let creds = o.string("credentials", pattern: Patterns.credentialsRef)
            o.finish()
            if let url, let path { files.append(SourceFile(url: url, path: path, sha256: sha, credentials: creds)) }
        }
        return .files(files)
    }

    static func command(_ f: Fields?) -> PlanCommand? {
        guard let f else { return nil }
        let base = f.stringArray("base", placeholders: true, nonEmpty: true)
        if f.values["base"] == nil { f.log.add(f.sub("base"), "is required") }
        var args: [PlanArg] = []
        for (p, item) in f.array("args") ?? [] {
            guard let a = Fields(item, path: p, log: f.log) else { continue }
            let id = a.string("id", required: true, pattern: Patterns.argID)
            let type = a.string("type", required: true, allowed: ArgType.allCases.map(\.rawValue)).flatMap(ArgType.init)
            let prefix = a.string("prefix", placeholders: true)
            let separate = a.bool("separate") ?? true
            let position = a.int("position", min: 0)
            let required = a.bool("required") ?? false
            let defaultValue = a.raw("default_value", required: false)
            if let defaultValue {
                switch defaultValue {
                case .string(let s):
                    if let problem = Placeholders.check(s) { f.log.add(a.sub("default_value"), problem) }
                case .int, .double, .bool: break
                default: f.log.add(a.sub("default_value"), "expected a string, number or boolean, got \(defaultValue.typeName)")
                }
            }
            let description = a.string("description", nonEmpty: false)
            a.finish()
            if let id, let type {
                args.append(PlanArg(id: id, type: type, prefix: prefix, separate: separate, position: position,
                                    required: required, defaultValue: defaultValue, description: description))
            }
        }
        f.finish()
        guard let base else { return nil }
        return PlanCommand(base: base, args: args)
    }

    /// Checks beyond what a JSON Schema can say: unique argument ids, defaults of the argument's type, and
    /// datasets named in placeholders declared in `inputs`.
    static func checkArgs(_ command: PlanCommand, plan f: Fields, inputs: [String], env: [String: String]) {
        var seen = Set<String>()
        let argsPath = f.sub("command.args")
        for (i, arg) in command.args.enumerated() {
            if !seen.insert(arg.id).inserted {
                f.log.add("\(argsPath)[\(i)].id", "\"\(arg.id)\" is used by an earlier argument")
            }
            if let d = arg.defaultValue, let problem = ArgValue.problem(d, type: arg.type, literal: false) {
                f.log.add("\(argsPath)[\(i)].default_value", problem)
            }
        }
        var strings: [(String, String)] = command.base.enumerated().map { ("\(f.sub("command.base"))[\($0.offset)]", $0.element) }
        strings += env.sorted { $0.key < $1.key }.map { ("\(f.sub("env")).\($0.key)", $0.value) }
        for (i, arg) in command.args.enumerated() {
            if let p = arg.prefix { strings.append(("\(argsPath)[\(i)].prefix", p)) }
            if case .string(let s)? = arg.defaultValue { strings.append(("\(argsPath)[\(i)].default_value", s)) }
        }
        for (path, s) in strings {
            for id in Placeholders.datasets(in: s) where !inputs.contains(id) {
                f.log.add(path, "names dataset \"\(id)\", which is not declared in \(f.sub("inputs"))")
            }
        }
    }

    /// Parameters against the plan: unknown ids, missing required ones, values of the wrong type.
    static func checkParams(_ params: [String: JSONValue], against plan: ToolPlan, log: IssueLog) {
        let byID = Dictionary(plan.command.args.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        for key in params.keys.sorted() {
            guard let arg = byID[key] else {
                log.add("params.\(key)", "is not an argument of plan \(plan.id) (its arguments: "
                        + (plan.command.args.isEmpty ? "none" : plan.command.args.map(\.id).joined(separator: ", ")) + ")")
                continue
            }
            if let problem = ArgValue.problem(params[key]!, type: arg.type, literal: true) {
                log.add("params.\(key)", problem)
            }
        }
        for arg in plan.command.args where arg.required && params[arg.id] == nil && arg.defaultValue == nil {
            log.add("params.\(arg.id)", "is required by plan \(plan.id) and has no default value")
        }
    }

    static func stageOut(_ f: Fields?) -> StageOutTarget? {
        guard let f else { return nil }
        let url = f.string("url", required: true)
        if let url, !(url.hasPrefix("https://") || url.hasPrefix("http://") || url.hasPrefix("file://")) {
            f.log.add(f.sub("url"), "must start with https://, http:// or file://")
        }
        let creds = f.string("credentials", pattern: Patterns.credentialsRef)
        let token = f.string("token", secret: true)
        f.finish()
        guard let url else { return nil }
        return StageOutTarget(url: url, credentials: creds, token: token)
    }

    static func flowerPlan(_ f: Fields?) -> FlowerPlan? {
        guard let f else { return nil }
        let mode = f.string("mode", required: true, allowed: FlowerMode.allCases.map(\.rawValue)).flatMap(FlowerMode.init)
        let entry = f.string("entry")
        if let entry, let problem = RelativePath.problem(entry) { f.log.add(f.sub("entry"), problem) }
        let requirements = f.stringArray("requirements") ?? []
        var nodeConfig: [String: JSONValue] = [:]
        if let raw = f.raw("node_config", required: false) {
            if case .object(let o) = raw {
                for (k, v) in o.sorted(by: { $0.key < $1.key }) {
                    switch v {
                    case .string(let s):
                        if let problem = Placeholders.check(s) { f.log.add("\(f.sub("node_config")).\(k)", problem) }
                    case .int, .double, .bool: break
                    default: f.log.add("\(f.sub("node_config")).\(k)", "expected a string, number or boolean, got \(v.typeName)")
                    }
                }
                nodeConfig = o
            } else {
                f.log.add(f.sub("node_config"), "expected an object, got \(raw.typeName)")
            }
        }
        f.finish()
        if mode == .script && entry == nil && f.values["entry"] == nil {
            f.log.add(f.sub("entry"), "is required in script mode (the client script under src/)")
        }
        guard let mode else { return nil }
        return FlowerPlan(mode: mode, entry: entry, requirements: requirements, nodeConfig: nodeConfig)
    }

    static func flowerTask(_ f: Fields?) -> FlowerTask? {
        guard let f else { return nil }
        let server = f.string("server", required: true)
        let insecure = f.bool("insecure") ?? false
        let roots = f.string("root_certificates")
        f.finish()
        guard let server else { return nil }
        return FlowerTask(server: server, insecure: insecure, rootCertificates: roots)
    }
}

/// Type checks for argument values. `literal` is true for parameter values from a task: those are never
/// placeholder-expanded, so `%%` in them is plain text.
enum ArgValue {
    static func problem(_ v: JSONValue, type: ArgType, literal: Bool) -> String? {
        switch (type, v) {
        case (.str, .string(let s)):
            return s.contains("\0") ? "must not contain a NUL character" : nil
        case (.int, .int):
            return nil
        case (.float, .int), (.float, .double):
            return nil
        case (.bool, .bool):
            return nil
        case (.file, .string(let s)):
            return RelativePath.problem(s)
        case (.dataset, .string(let s)):
            return Patterns.matches(Patterns.datasetID, s) ? nil : "\"\(s)\" is not a dataset id"
        case (.int, .string(let s)):
            return "expected an integer, got string \"\(s.prefix(40))\""
        default:
            let want = switch type {
            case .str, .file: "a string"
            case .int: "an integer"
            case .float: "a number"
            case .bool: "a boolean"
            case .dataset: "a dataset id (string)"
            }
            return "expected \(want), got \(v.typeName)"
        }
    }
}

/// Paths that come from documents: relative, no `..`, no empty or `.` segments, no NUL.
public enum RelativePath {
    public static func problem(_ path: String) -> String? {
        if path.isEmpty { return "must not be empty" }
        if path.hasPrefix("/") { return "\"\(path)\" is an absolute path; only paths relative to the sandbox are allowed" }
        if path.contains("\0") { return "must not contain a NUL character" }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        if parts.contains("..") { return "\"\(path)\" contains \"..\"; paths may not leave the sandbox" }
        if parts.contains(where: { $0.isEmpty || $0 == "." }) { return "\"\(path)\" has an empty or \".\" segment" }
        return nil
    }
}
