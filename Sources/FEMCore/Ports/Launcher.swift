import Foundation

/// What a launcher hands back after starting work: opaque to the runner, persisted by the journal, and given
/// back to `recover` after a restart (as Nomad's task handles). Versioned so a newer daemon can read an old one.
public struct LaunchHandle: Sendable, Codable, Equatable {
    public var launcher: String
    public var version: Int
    public var data: [String: String]

    public init(launcher: String, version: Int = 1, data: [String: String]) {
        self.launcher = launcher
        self.version = version
        self.data = data
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

    public init(exitCode: Int32?, signal: Int32? = nil, outOfMemory: Bool = false, message: String? = nil,
                cpuSeconds: Double? = nil, peakMemoryBytes: UInt64? = nil) {
        self.exitCode = exitCode
        self.signal = signal
        self.outOfMemory = outOfMemory
        self.message = message
        self.cpuSeconds = cpuSeconds
        self.peakMemoryBytes = peakMemoryBytes
    }

    public var succeeded: Bool { exitCode == 0 && !outOfMemory }
}

public enum Recovery: Sendable, Equatable {
    /// Still running: the runner waits for it again.
    case running
    /// Ended while the daemon was down.
    case exited(LaunchOutcome)
    /// Cannot be followed any more (the reason says why); the task fails with `node_restart`.
    case lost(String)
}

/// One way of running prepared work. Every launcher has the same shape (see Sources/FEMLaunchers).
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
    /// Starts the work. `persist` is called with the handle as soon as it identifies the work, before the work
    /// can have finished, so that a crash right after still leaves the handle in the journal.
    func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) throws -> Void) async throws -> LaunchHandle
    /// Waits until the work ends.
    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome
    /// Asks the work to stop, then forces it after `grace`.
    func stop(_ handle: LaunchHandle, grace: Duration) async
    /// After a daemon restart: what became of the job's work. `handle` is nil when the daemon died between starting
    /// the work and journaling its handle; a launcher then finds the work by what it stamped on it (an environment
    /// variable, a container label).
    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery
    func signal(in line: String) -> LaunchSignal?
    var unreachableLimit: Duration? { get }
    /// After the tool reports `Finished`, how long the work may take to deliver the reply it is still sending
    /// (a Flower SuperNode's answer to the round in which its ClientApp said `Finished`) before it is stopped.
    /// Nil: it is stopped at once.
    var finishDeliveryLimit: Duration? { get }
    /// How long the work keeps running after that reply went out, for its server to collect it (a SuperLink reports
    /// a node that left as unavailable even when its reply is stored).
    var finishLinger: Duration { get }
}

/// What a launcher reads in its work's log lines (a Flower SuperNode connecting or losing its SuperLink).
public enum LaunchSignal: Sendable, Equatable {
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

extension Launcher {
    /// Signals this launcher reads in a line of its work's output. None by default.
    public func signal(in line: String) -> LaunchSignal? { nil }
    /// How long the work may stay disconnected from its server. Nil: no limit.
    public var unreachableLimit: Duration? { nil }
    public var finishDeliveryLimit: Duration? { nil }
    public var finishLinger: Duration { .zero }
    public func prepare(_ job: LaunchJob) async throws {}
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
