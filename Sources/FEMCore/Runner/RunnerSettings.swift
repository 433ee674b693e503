import Foundation
import Logging

/// Node settings the runner needs: identity, concurrency, timeouts and the datasets it may mount.
public struct RunnerSettings: Sendable {
    public var nodeID: String
    public var nodeName: String
    public var maxConcurrentTasks: Int
    /// `[node.capacity]`: what running tasks' `resources` may reserve in all (the daemon passes the host's values or
    /// the configured caps; the default has no practical limit).
    public var capacity: Capacity = .unlimited
    public var defaultTimeoutSeconds: Int
    /// A task may ask for more time than its plan declares only when this is true.
    public var allowTimeoutAbovePlan: Bool
    /// Upper bound for any task, whatever it asks.
    public var maxTimeoutSeconds: Int
    public var stopGrace: Duration
    /// Dataset id → host path.
    public var datasets: [String: String]
    /// `launchers.env_allowed`: the only environment names a plan may set (exact, or `PREFIX*`); empty: any name
    /// the built-in deny list (EnvironmentPolicy) does not refuse.
    public var envAllowed: [String]
    /// What the reporter channel may carry (`[reporter]`, and the airlock's hold on tool text).
    public var reporter: ReporterLimits
    /// A state change the journal refuses is tried again after this, doubling up to `journalRetryMax`.
    public var journalRetryBase: Duration = .milliseconds(200)
    public var journalRetryMax: Duration = .seconds(5)
    /// After a cancel, a stage-in step or a start that has not stopped by then is left behind (the task ends
    /// `cancelled` at once, and whatever the step still brings is stopped or ignored).
    public var cancelDeadline: Duration = .milliseconds(1500)
    /// Why the node's disk was full at some time since the given date (nil when it was not): a task that fails while
    /// it is, fails `node_disk_full` with that cause (its writes, its logs included, fail too).
    public var diskPressure: @Sendable (Date) -> String? = { _ in nil }
    /// `[trust]`: signed plans and the site's tool registry (OpenPlanTrust: any plan the allowlists permit).
    public var trust: any PlanTrust = OpenPlanTrust()
    /// Called once a task's final state is journaled (the daemon retries a failed pool task elsewhere).
    public var taskEnded: @Sendable (_ taskID: String, _ state: TaskState, _ detail: EventDetail) -> Void = { _, _, _ in }

    public init(nodeID: String, nodeName: String? = nil, maxConcurrentTasks: Int = 2, defaultTimeoutSeconds: Int = 3600,
                allowTimeoutAbovePlan: Bool = false, maxTimeoutSeconds: Int = 7 * 24 * 3600,
                stopGrace: Duration = .seconds(10), datasets: [String: String] = [:], envAllowed: [String] = [],
                reporter: ReporterLimits = ReporterLimits()) {
        self.reporter = reporter
        self.nodeID = nodeID
        self.nodeName = nodeName ?? nodeID
        self.maxConcurrentTasks = maxConcurrentTasks
        self.defaultTimeoutSeconds = defaultTimeoutSeconds
        self.allowTimeoutAbovePlan = allowTimeoutAbovePlan
        self.maxTimeoutSeconds = maxTimeoutSeconds
        self.stopGrace = stopGrace
        self.datasets = datasets
        self.envAllowed = envAllowed
    }
}
