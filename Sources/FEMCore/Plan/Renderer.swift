import Foundation

/// The folders of a task's sandbox as the tool sees them (host paths for `process`, container paths for
/// `docker`).
public struct ToolPaths: Sendable, Equatable, Codable {
    public var sandbox: String
    public var src: String
    public var input: String
    public var output: String
    public var logs: String

    public init(sandbox: String, src: String, input: String, output: String, logs: String) {
        self.sandbox = sandbox
        self.src = src
        self.input = input
        self.output = output
        self.logs = logs
    }

    /// The standard layout `<root>/{src,in,out,logs}`.
    public static func under(_ root: String) -> ToolPaths {
        ToolPaths(sandbox: root, src: "\(root)/src", input: "\(root)/in", output: "\(root)/out", logs: "\(root)/logs")
    }

    enum CodingKeys: String, CodingKey {
        case sandbox, src
        case input = "in"
        case output = "out"
        case logs
    }
}

/// What the node knows when it expands a plan: its own identity, the task's sandbox and its datasets.
public struct RenderContext: Sendable {
    public var nodeID: String
    public var nodeName: String
    public var paths: ToolPaths
    /// Dataset id → path as the tool sees it. Only datasets the node has are here.
    public var datasets: [String: String]

    public init(nodeID: String, nodeName: String, paths: ToolPaths, datasets: [String: String]) {
        self.nodeID = nodeID
        self.nodeName = nodeName
        self.paths = paths
        self.datasets = datasets
    }
}

public enum RenderError: Error, Equatable, CustomStringConvertible, Sendable {
    case unknownPlaceholder(String)
    case unknownDataset(String)
    case missingParameter(String)

    public var description: String {
        switch self {
        case .unknownPlaceholder(let n): "unknown placeholder %%\(n)%%"
        case .unknownDataset(let id): "dataset \"\(id)\" is not available on this node"
        case .missingParameter(let id): "parameter \(id) is required and has no value"
        }
    }
}

/// The exact command the node would run: argv (never a shell string), environment, and the rest.
public struct RenderedCommand: Sendable, Equatable, Codable {
    public var launcher: String
    public var argv: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    public var image: String?
    public var datasets: [String]
    public var paths: ToolPaths
    public var timeoutSeconds: Int?
    public var cpus: Double?
    public var memoryMB: Int?
    public var gpus: Int?
    public var storageMB: Int?
    public var network: String
    /// A flower plan's `node_config`, placeholders expanded, values as text (`--node-config k=v ...`).
    public var flowerNodeConfig: [String: String]?

    enum CodingKeys: String, CodingKey {
        case launcher, argv, environment
        case workingDirectory = "working_directory"
        case image, datasets, paths
        case timeoutSeconds = "timeout_seconds"
        case cpus
        case memoryMB = "memory_mb"
        case gpus
        case storageMB = "storage_mb"
        case network
        case flowerNodeConfig = "flower_node_config"
    }
}

public enum Renderer {
    /// Expands a validated task into the command to run. Parameter values are passed literally: they never
    /// go through placeholder expansion or a shell.
    public static func render(_ task: TaskSpec, context: RenderContext, timeoutSeconds: Int?) throws -> RenderedCommand {
        let plan = task.plan
        let lookup: (String) -> String? = { name in
            switch name {
            case "node_name": context.nodeName
            case "node_id": context.nodeID
            case "sandbox": context.paths.sandbox
            case "src": context.paths.src
            case "in": context.paths.input
            case "out": context.paths.output
            case "logs": context.paths.logs
            case "task_id": task.taskID
            case "execution_id": task.executionID
            default:
                name.hasPrefix("dataset:") ? context.datasets[String(name.dropFirst(8))] : nil
            }
        }
        let expand = { (s: String) throws -> String in
            do { return try Placeholders.expand(s, lookup) } catch RenderError.unknownPlaceholder(let name)
                where name.hasPrefix("dataset:") {
                throw RenderError.unknownDataset(String(name.dropFirst(8)))
            }
        }
        var usedDatasets = Set(plan.inputs)
        for id in plan.inputs where context.datasets[id] == nil { throw RenderError.unknownDataset(id) }

        var argv = try plan.command.base.map(expand)
        let ordered = plan.command.args.enumerated().sorted {
            ($0.element.position ?? Int.max, $0.offset) < ($1.element.position ?? Int.max, $1.offset)
        }
        for (_, arg) in ordered {
            let literal = task.params[arg.id] != nil
            guard let value = task.params[arg.id] ?? arg.defaultValue else {
                if arg.required { throw RenderError.missingParameter(arg.id) }
                continue
            }
            let prefix = try arg.prefix.map(expand)
            var text: String
            switch (arg.type, value) {
            case (.bool, .bool(let b)):
                // A flag: its prefix when true, nothing when false.
                if b, let prefix { argv.append(prefix) } else if b { argv.append("true") }
                continue
            case (.file, .string(let s)):
                text = "\(context.paths.input)/\(literal ? s : try expand(s))"
            case (.dataset, .string(let id)):
                guard let path = context.datasets[id] else { throw RenderError.unknownDataset(id) }
                usedDatasets.insert(id)
                text = path
            case (_, .string(let s)):
                text = literal ? s : try expand(s)
            case (_, .int(let i)):
                text = String(i)
            case (_, .double(let d)):
                text = d == d.rounded() && abs(d) < 1e15 ? String(format: "%.1f", d) : String(d)
            case (_, .bool(let b)):
                text = b ? "true" : "false"
            default:
                text = ""
            }
            if let prefix {
                if arg.separate { argv += [prefix, text] } else { argv.append(prefix + text) }
            } else {
                argv.append(text)
            }
        }

        var env: [String: String] = [:]
        for (k, v) in plan.env { env[k] = try expand(v) }
        env["FEM_TASK_ID"] = task.taskID
        env["FEM_EXECUTION_ID"] = task.executionID
        env["FEM_NODE_ID"] = context.nodeID
        env["FEM_SANDBOX"] = context.paths.sandbox
        env["FEM_SRC_DIR"] = context.paths.src
        env["FEM_INPUT_DIR"] = context.paths.input
        env["FEM_OUTPUT_DIR"] = context.paths.output
        var flowerNodeConfig: [String: String]?
        if let flower = plan.flower {
            var config: [String: String] = [:]
            for (k, v) in flower.nodeConfig {
                switch v {
                case .string(let s): config[k] = try expand(s)
                case .int(let i): config[k] = String(i)
                case .double(let d): config[k] = String(d)
                case .bool(let b): config[k] = b ? "true" : "false"
                default: continue
                }
            }
            flowerNodeConfig = config
        }
        for id in usedDatasets.sorted() {
            if let path = context.datasets[id] { env["FEM_DATASET_\(envSafe(id))"] = path }
        }
        var command = RenderedCommand(launcher: plan.launcher, argv: argv, environment: env,
                               workingDirectory: plan.source == nil ? context.paths.sandbox : context.paths.src,
                               image: plan.image, datasets: usedDatasets.sorted(), paths: context.paths,
                               timeoutSeconds: timeoutSeconds, cpus: plan.resources.cpus,
                               memoryMB: plan.resources.memoryMB, gpus: plan.resources.gpus,
                               storageMB: plan.resources.storageMB, network: plan.network.rawValue)
        command.flowerNodeConfig = flowerNodeConfig
        return command
    }

    /// `my-data.v2` → `MY_DATA_V2`, for `FEM_DATASET_<ID>` variables.
    public static func envSafe(_ id: String) -> String {
        String(id.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }
}
