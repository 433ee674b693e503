import Foundation

/// Watches what the journal commits, for the node's metrics (`[metrics]`). The journal is the one place every state
/// change and event of every part of the runner goes through, so it is the one observation point: nothing else calls
/// this. Called after the transaction committed, on the thread that wrote it (the runner's journal thread): an
/// implementation must be quick and must never block or write to the journal.
public protocol TaskMetrics: Sendable {
    /// A committed state change. `from` is the state the task left and `since` when it entered that state, both as
    /// journaled (so a step that began before a restart is measured from its real start); nil for a message
    /// rejected without a task row.
    func stateChanged(_ event: TaskEvent, from: TaskState?, since: Date?)
    /// A committed event without a state change (progress, notice, duplicate, approval).
    func noted(_ event: TaskEvent)
}

/// Metrics off: the default.
public struct NoTaskMetrics: TaskMetrics {
    public init() {}
    public func stateChanged(_ event: TaskEvent, from: TaskState?, since: Date?) {}
    public func noted(_ event: TaskEvent) {}
}

/// What a journaled event means for the metrics, without any metrics library: the step a state change ends, and
/// the bytes a staging event says were moved.
public enum TaskMeasures {
    /// The steps whose durations are measured, by the state the task is in while it does them.
    public static let steps: [(state: TaskState, name: String)] = [
        (.stagingIn, "stage_in"), (.running, "run"), (.stagingOut, "stage_out"),
    ]

    /// The step a task ends when it leaves `from` for `to` (nil when `from` is no step, or it does not leave it).
    public static func step(leaving from: TaskState?, to: TaskState) -> String? {
        guard let from, from != to else { return nil }
        return steps.first { $0.state == from }?.name
    }

    /// How long the step took: from the journaled time it began to the time of the change that ended it (never
    /// negative, should the clock have stepped back).
    public static func duration(since: Date?, until: Date) -> TimeInterval? {
        guard let since else { return nil }
        return max(0, until.timeIntervalSince(since))
    }

    public enum Direction: String, Sendable {
        case stagedIn = "in"
        case stagedOut = "out"
    }

    /// Bytes a progress event of stage-in (a download, a git fetch) or stage-out (an upload) reports as moved:
    /// the node's own events in those states carry `data.bytes`. Events of other states (a tool's own progress
    /// reports while it runs) never count.
    public static func stagedBytes(_ event: TaskEvent) -> (Direction, Int64)? {
        guard event.kind == .progress, case .int(let bytes)? = event.detail.data?["bytes"], bytes >= 0 else {
            return nil
        }
        switch event.state {
        case .stagingIn: return (.stagedIn, bytes)
        case .stagingOut: return (.stagedOut, bytes)
        default: return nil
        }
    }
}
