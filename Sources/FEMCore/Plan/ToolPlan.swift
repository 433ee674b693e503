import Foundation

/// A tool plan: how to run one tool, written once by its author. See docs/templates/README.md.
public struct ToolPlan: Sendable, Equatable {
    public static let supportedSchemaVersions = [1]
    public static let launchers = ["docker", "process", "flower", "slurm"]

    public var schemaVersion: Int
    public var id: String
    public var version: String
    public var description: String?
    public var launcher: String
    public var image: String?
    public var pullPolicy: PullPolicy?
    public var source: PlanSource?
    public var command: PlanCommand
    public var env: [String: String]
    public var inputs: [String]
    public var outputs: [OutputRule]
    public var resources: Resources
    public var network: NetworkMode
    public var timeoutSeconds: Int?
    public var flower: FlowerPlan?
    /// `retry`: a pool task failing with a listed class goes back to its pool (the task's own `retry` wins).
    public var retry: RetrySpec? = nil
    /// A selection criterion over node attributes (docs/templates/README.md, "Constraints"); nil: any node.
    public var constraints: String? = nil
    /// Start order among this node's waiting tasks: higher first, FIFO within one priority (default 0).
    public var priority: Int? = nil
    /// The plan as its document was received (a signature and a registry approval are over its canonical form).
    public var document: JSONValue? = nil
    /// `signature`: the author's Ed25519 signature over the plan's canonical form (`PlanIdentity.signedBytes`).
    /// Checked by the node's trust policy (`[trust]`), never by the reader.
    public var signature: PlanSignature? = nil

    /// `sha256:<hex>` of the plan's canonical form without its signature (`PlanIdentity`); nil for a plan built
    /// in code.
    public var contentHash: String? { document.map(PlanIdentity.hash) }
}

/// A plan's `signature` member as received: well-formed, not yet verified (docs/protocol.md, "Signed plans").
public struct PlanSignature: Sendable, Equatable {
    public static let algorithms = ["ed25519"]
    /// `key_id`: 16 lowercase hex digits, the first 8 bytes of the SHA-256 of the raw 32-byte public key.
    public static let keyIDPattern = #"^[0-9a-f]{16}$"#

    public var algorithm: String
    public var keyID: String
    /// The 64 signature bytes (`value`, base64 on the wire).
    public var value: [UInt8]
    /// `signer`: the author's name as the author wrote it; informational, never trusted (the node names the key
    /// from its own config).
    public var signer: String?

    public init(algorithm: String = "ed25519", keyID: String, value: [UInt8], signer: String? = nil) {
        self.algorithm = algorithm
        self.keyID = keyID
        self.value = value
        self.signer = signer
    }

    /// The member as it goes into a plan document.
    public var json: JSONValue {
        var o: [String: JSONValue] = ["algorithm": .string(algorithm), "key_id": .string(keyID),
                                      "value": .string(Data(value).base64EncodedString())]
        if let signer { o["signer"] = .string(signer) }
        return .object(o)
    }
}

public enum PullPolicy: String, Sendable, Equatable, CaseIterable {
    case always
    case ifNotPresent = "if-not-present"
}

public enum NetworkMode: String, Sendable, Equatable, CaseIterable {
    case none
    case host
}

public enum PlanSource: Sendable, Equatable {
    case git(GitSource)
    case files([SourceFile])
}

public struct GitSource: Sendable, Equatable {
    public var url: String
    public var ref: String?
    public var commit: String?
    public var credentials: String?
}

public struct SourceFile: Sendable, Equatable {
    public var url: String
    /// Relative path under the sandbox's `src/` folder.
    public var path: String
    public var sha256: String?
    public var credentials: String?
}

public struct PlanCommand: Sendable, Equatable {
    public var base: [String]
    public var args: [PlanArg]
}

public enum ArgType: String, Sendable, Equatable, CaseIterable {
    case str, int, float, bool, file, dataset
}

public struct PlanArg: Sendable, Equatable {
    public var id: String
    public var type: ArgType
    public var prefix: String?
    /// Prefix and value as two argv items (true) or one (`prefix + value`).
    public var separate: Bool
    public var position: Int?
    public var required: Bool
    public var defaultValue: JSONValue?
    public var description: String?
}

public struct OutputRule: Sendable, Equatable {
    /// A glob relative to the sandbox's `out/` folder: `*`, `?`, `**` and `[...]`.
    public var pattern: String
    public var maxBytes: Int64?
}

public struct Resources: Sendable, Equatable {
    public var cpus: Double?
    public var memoryMB: Int?
    public var gpus: Int?
    public var storageMB: Int?
    /// The Slurm partition the plan asks for (`launchers.slurm` checks it against the node's allowed ones).
    public var partition: String? = nil
    /// The Slurm account and QOS the plan asks for, checked the same way.
    public var account: String? = nil
    public var qos: String? = nil

    public static let none = Resources(cpus: nil, memoryMB: nil, gpus: nil, storageMB: nil)
}

public enum FlowerMode: String, Sendable, Equatable, CaseIterable {
    case supernode
    case script
}

public struct FlowerPlan: Sendable, Equatable {
    public var mode: FlowerMode
    /// For `script`: the client script, relative to `src/`. For `supernode`: the app folder under `src/`.
    public var entry: String?
    public var requirements: [String]
    public var nodeConfig: [String: JSONValue]
}

/// A task: one run of a plan on a node, as the orchestrator sends it.
public struct TaskSpec: Sendable, Equatable {
    public static let supportedSchemaVersions = [1]

    public var schemaVersion: Int
    public var taskID: String
    public var executionID: String
    public var plan: ToolPlan
    public var params: [String: JSONValue]
    public var timeoutSeconds: Int?
    public var stageOut: StageOutTarget?
    public var flower: FlowerTask?
    /// `retry` (pool tasks): overrides the plan's.
    public var retry: RetrySpec? = nil
    /// `attempt`: 1 for the first run; a pool task retried after a failure comes again with the next number.
    public var attempt: Int = 1
    /// `pool`: where the task is in its work pool (written by the nodes that passed it on).
    public var pool: PoolTicket? = nil
    /// `alternatives` (pool tasks): plans tried in order, each when the one before failed (and is not retried).
    public var alternatives: [ToolPlan] = []

    /// The retry rule that applies: the task's, else its plan's.
    public var effectiveRetry: RetrySpec? { retry ?? plan.retry }
    /// The task's own selection criterion, and-ed with its plan's.
    public var constraints: String? = nil
    /// Overrides the plan's `priority` for this task.
    public var priority: Int? = nil

    /// The priority the node queues the task with: the task's, else the plan's, else 0.
    public var effectivePriority: Int { priority ?? plan.priority ?? 0 }
}

public struct StageOutTarget: Sendable, Equatable, CustomStringConvertible {
    /// `https://`, `http://` or `file://`.
    public var url: String
    /// A credentials reference resolved from the node config.
    public var credentials: String?
    /// A bearer token carried in the message. A secret: never logged or described.
    public var token: String?

    public init(url: String, credentials: String?, token: String?) {
        self.url = url
        self.credentials = credentials
        self.token = token
    }

    public var description: String { url }
}

public struct FlowerTask: Sendable, Equatable {
    /// SuperLink address (supernode mode) or server address (script mode), `host:port`.
    public var server: String
    public var insecure: Bool
    public var rootCertificates: String?
}
