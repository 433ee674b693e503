import Foundation

/// What a launcher keeps about work it started, journaled inside its `LaunchHandle` and given back after a restart
/// (Nomad's driver state): each launcher's own `Codable` struct (a PID and its start time, a container id), with a
/// version, so that a newer daemon reads what an older one wrote.
public protocol LauncherState: Codable, Sendable, Equatable {
    /// The version of this format, kept in the handle. Version 1 is the untyped `[String: String]` handle that
    /// daemons before typed state journaled; typed formats start at 2. Raise it when the format changes, and read
    /// the older ones in `init(from:)`.
    static var version: Int { get }
    /// The state of a version-1 handle (string pairs, journaled by an older daemon for work that may still be
    /// running); nil when the pairs do not describe work of this launcher.
    init?(legacy data: [String: String])
}

/// What a launcher hands back after starting work: opaque to the runner, persisted by the journal, and given
/// back to `recover` after a restart (as Nomad's task handles). The launcher's state inside is typed and versioned.
public struct LaunchHandle: Sendable, Codable, Equatable {
    public var launcher: String
    /// The version of the launcher's state format (`LauncherState.version`; 1: the untyped handles of older daemons).
    public var version: Int
    /// The launcher's state as JSON: read it with `state(as:)`.
    public var state: JSONValue

    public init<State: LauncherState>(launcher: String, state: State) {
        self.launcher = launcher
        self.version = State.version
        // A Codable struct of strings and numbers always encodes; a failure would be a programming error, kept visible.
        self.state = (try? JSONValue.parse(JSONEncoder.fem.encode(state))) ?? .object(["unencodable": .bool(true)])
    }

    /// A handle as daemons before typed launcher state wrote it (for tests of their recovery, and journals).
    public init(launcher: String, legacy data: [String: String]) {
        self.launcher = launcher
        self.version = 1
        self.state = .object(data.mapValues { .string($0) })
    }

    /// The launcher's state. Throws when the handle belongs to another launcher, was written by a newer daemon (a
    /// version this one does not know), or does not hold a state of this type.
    public func state<State: LauncherState>(as type: State.Type) throws -> State {
        guard version <= State.version else {
            throw TaskFailure(.runnerSystemFailure, "the \(launcher) handle has version \(version), newer than this "
                              + "daemon's \(State.version): it was written by a newer fem-client")
        }
        if version <= 1 {
            let pairs = (state.objectValue ?? [:]).compactMapValues(\.stringValue)
            guard let legacy = State(legacy: pairs) else {
                throw TaskFailure(.runnerSystemFailure, "the \(launcher) handle (version 1) does not describe its work: "
                                  + pairs.keys.sorted().joined(separator: ", "))
            }
            return legacy
        }
        do {
            return try JSONDecoder.fem.decode(State.self, from: Data(state.encoded()))
        } catch {
            throw TaskFailure(.runnerSystemFailure, "the \(launcher) handle (version \(version)) cannot be read: \(error)")
        }
    }

    private enum CodingKeys: String, CodingKey { case launcher, version, state, data }

    /// Reads both formats: `state` (typed, version ≥ 2) and `data` (version 1, string pairs), so that a daemon
    /// upgraded while tasks run still recovers them.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        launcher = try c.decode(String.self, forKey: .launcher)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? 1
        if let state = try c.decodeIfPresent(JSONValue.self, forKey: .state) {
            self.state = state
        } else {
            let data = try c.decodeIfPresent([String: String].self, forKey: .data) ?? [:]
            self.state = .object(data.mapValues { .string($0) })
            version = min(version, 1)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(launcher, forKey: .launcher)
        try c.encode(version, forKey: .version)
        if version <= 1 {
            try c.encode((state.objectValue ?? [:]).compactMapValues(\.stringValue), forKey: .data)
        } else {
            try c.encode(state, forKey: .state)
        }
    }
}

/// Prepared work: the validated task, the command after expansion, and where its logs go on the host.
public struct LaunchJob: Sendable {
    public var task: TaskSpec
    public var command: RenderedCommand
    /// Host paths of the sandbox.
    public var sandbox: ToolPaths
    public var stdoutPath: String
    public var stderrPath: String
    /// What the node's trust policy bound this run to (an approved image digest, the plan's signer).
    public var trust = TrustVerdict()

    public init(task: TaskSpec, command: RenderedCommand, sandbox: ToolPaths) {
        self.task = task
        self.command = command
        self.sandbox = sandbox
        self.stdoutPath = "\(sandbox.logs)/stdout.log"
        self.stderrPath = "\(sandbox.logs)/stderr.log"
    }
}

/// How launched work ended.
public struct LaunchOutcome: Sendable, Equatable {
    public var exitCode: Int32?
    public var signal: Int32?
    public var outOfMemory: Bool
    public var message: String?
    /// CPU time and peak memory of everything the work ran, where the launcher can count them (a host task's
    /// cgroup); they go into the terminal event's `data.usage`.
    public var cpuSeconds: Double?
    public var peakMemoryBytes: UInt64?
    /// How the work ended where the launcher's scheduler says so (a Slurm job's `TIMEOUT`, `NODE_FAIL`,
    /// `PREEMPTED`): the task fails with this class. Nil: classified from the exit code, signal and `outOfMemory`.
    public var failureClass: FailureClass?

    public init(exitCode: Int32?, signal: Int32? = nil, outOfMemory: Bool = false, message: String? = nil,
                cpuSeconds: Double? = nil, peakMemoryBytes: UInt64? = nil, failureClass: FailureClass? = nil) {
        self.failureClass = failureClass
        self.exitCode = exitCode
        self.signal = signal
        self.outOfMemory = outOfMemory
        self.message = message
        self.cpuSeconds = cpuSeconds
        self.peakMemoryBytes = peakMemoryBytes
    }

    public var succeeded: Bool { exitCode == 0 && !outOfMemory && failureClass == nil }
}

public enum Recovery: Sendable, Equatable {
    /// Still running: the runner waits for it again.
    case running
    /// Ended while the daemon was down.
    case exited(LaunchOutcome)
    /// Cannot be followed any more (the reason says why); the task fails with `node_restart`.
    case lost(String)
}

/// What a launcher can tell about work it started, while it runs or after (Nomad's InspectTask and TaskStats).
public struct LaunchInspection: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case running
        /// Ended (and not yet removed); how, where the launcher can tell.
        case exited(LaunchOutcome?)
        /// Neither running nor found (removed, or never started); the reason says what is known.
        case gone(String)
    }

    public var state: State
    /// CPU time used so far by everything the work ran, where the launcher counts it (a task cgroup).
    public var cpuSeconds: Double?
    /// Memory in use now (or the peak, after the work ended), where the launcher counts it.
    public var memoryBytes: UInt64?

    public init(state: State, cpuSeconds: Double? = nil, memoryBytes: UInt64? = nil) {
        self.state = state
        self.cpuSeconds = cpuSeconds
        self.memoryBytes = memoryBytes
    }
}

/// One way of running prepared work, shaped like Nomad's task driver: `start` → `wait` (→ `stop`) → `destroy`, with
/// `recover` after a daemon restart and `inspect` at any time. Every launcher has this shape (see
/// Sources/FEMLaunchers); what only work that talks to a server needs is `ServerLinkedLauncher`.
///
/// Calls come from any task, concurrently for different work (a launcher is `Sendable`). A call that blocks (a
/// container engine request, a cgroup read) does so off the cooperative pool (FEMSystem's `offload`).
public protocol Launcher: Sendable {
    var name: String { get }
    /// How the tool sees its sandbox, given the host paths.
    func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths
    /// How the tool sees a dataset, given its host path.
    func datasetPath(id: String, hostPath: String) -> String
    /// Node policy for this launcher: nil when allowed, else the reason the task is declined.
    func policyCheck(_ job: LaunchJob) -> String?
    /// What the work needs before it can start, done as part of stage-in (a Flower tool's Python environment):
    /// cancellable, and a failure fails stage-in. Nothing by default.
    func prepare(_ job: LaunchJob) async throws
    /// Starts the work. `persist` is awaited with the handle as soon as it identifies the work, before the work
    /// can have finished, so that a crash right after still leaves the handle in the journal. When `persist` throws,
    /// the launcher stops and removes what it started before it throws (nothing runs unsupervised).
    func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle
    /// Waits until the work ends.
    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome
    /// Asks the work to stop, then forces it after `grace`.
    func stop(_ handle: LaunchHandle, grace: Duration) async
    /// Removes whatever is left of the work once it ended or was stopped (a container, a cgroup): called after
    /// every supervision, whatever `wait` returned or threw. Idempotent: what is already gone is skipped.
    func destroy(_ handle: LaunchHandle) async
    /// Whether the work runs, and what it used so far, where the launcher can tell.
    func inspect(_ handle: LaunchHandle) async -> LaunchInspection
    /// After a daemon restart: what became of the job's work. `handle` is nil when the daemon died between starting
    /// the work and journaling its handle; a launcher then finds the work by what it stamped on it (an environment
    /// variable, a container label).
    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery
}

extension Launcher {
    public func prepare(_ job: LaunchJob) async throws {}
}

/// Where work waits in a scheduler's queue before it runs (`QueuedLauncher`).
public enum QueueState: Sendable, Equatable {
    /// Not running yet; the scheduler's reason, where it gave one (Slurm: `Resources`, `Priority`, `QOSMaxCpuPerUserLimit`).
    case waiting(String?)
    /// Running, or already ended: nothing more to report.
    case started
}

/// A launcher whose work may wait in a scheduler's queue (a Slurm job `PENDING`): while it waits, the runner asks
/// every `queuePollInterval` and reports each new reason as a `notice` event. Only `SlurmLauncher` adopts it; the
/// runner asks `as? QueuedLauncher`.
public protocol QueuedLauncher: Launcher {
    func queueState(_ handle: LaunchHandle) async -> QueueState
    var queuePollInterval: Duration { get }
}

/// A launcher whose work talks to a server (a Flower SuperNode and its SuperLink): its log lines say when the link
/// is up or lost, and the runner fails work that stays away from its server too long, and lets work deliver its last
/// answer after the tool reported `Finished`. Only `FlowerLauncher` adopts it; the runner asks `as? ServerLinkedLauncher`.
public protocol ServerLinkedLauncher: Launcher {
    /// What a line of the work's output (stdout or stderr) says about its link; nil for any other line.
    func linkEvent(inLogLine line: String) -> LinkEvent?
    /// How long the work may stay disconnected from its server before the task fails `server_unreachable`. Nil: no
    /// limit.
    var unreachableLimit: Duration? { get }
    /// After the tool reports `Finished`, how long the work may take to deliver the reply it is still sending
    /// (a Flower SuperNode's answer to the round in which its ClientApp said `Finished`) before it is stopped.
    /// Nil: it is stopped at once.
    var finishDeliveryLimit: Duration? { get }
    /// How long the work keeps running after that reply went out, for its server to collect it (a SuperLink reports
    /// a node that left as unavailable even when its reply is stored).
    var finishLinger: Duration { get }
}

/// What a server-linked launcher reads in its work's log lines (a Flower SuperNode connecting or losing its
/// SuperLink).
public enum LinkEvent: Sendable, Equatable {
    /// Worth an event, nothing more.
    case notice(String)
    /// The work reached its server; a pending "unreachable" deadline is lifted.
    case connected(String)
    /// The work lost (or has not yet reached) its server; past the launcher's `unreachableLimit` the task fails
    /// with `server_unreachable`.
    case disconnected(String)
    /// The work took a message from its server that it will answer (no event).
    case messageReceived
    /// The work delivered an answer to its server (no event).
    case replySent
}

/// The launchers this node can use, built explicitly by the executable (no registration by side effect).
public struct LauncherRegistry: Sendable {
    public private(set) var launchers: [String: any Launcher] = [:]

    public init(_ launchers: [any Launcher]) {
        for l in launchers { self.launchers[l.name] = l }
    }

    public func launcher(named name: String) -> (any Launcher)? { launchers[name] }
    public var names: [String] { launchers.keys.sorted() }
}
