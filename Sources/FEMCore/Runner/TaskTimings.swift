import Foundation

/// How long a task spent in each step, from its journaled state changes (so they survive restarts): the `timings`
/// of its terminal event, `fem-client tasks` and `fem-client stats`.
public struct TaskTimings: Sendable, Equatable {
    /// From `received` to `staging_in` (or to its end, when it never started): in `received` and `queued`.
    public var queuedMS: Int64 = 0
    public var stageInMS: Int64 = 0
    public var runMS: Int64 = 0
    /// Time in `staging_out`, without the time its outputs waited for approval.
    public var stageOutMS: Int64 = 0
    /// Time in `awaiting_approval`; nil when the outputs never waited.
    public var approvalMS: Int64?

    public init() {}

    /// From a task's history (its state events in order) and the time of the state it moves to now (`end`, with
    /// `state` when that change is not in the history yet).
    public init(history: [TaskEvent], end: Date? = nil) {
        var changes = history.filter { $0.kind == .state }.map { ($0.state, $0.time) }
        if let end { changes.append((.completed, end)) }
        for (i, (state, time)) in changes.enumerated() where i + 1 < changes.count {
            let ms = max(0, Int64((changes[i + 1].1.timeIntervalSince(time) * 1000).rounded()))
            switch state {
            case .received, .queued: queuedMS += ms
            case .stagingIn: stageInMS += ms
            case .running: runMS += ms
            case .stagingOut: stageOutMS += ms
            case .awaitingApproval: approvalMS = (approvalMS ?? 0) + ms
            case .completed, .failed, .cancelled, .rejected, .declined: break
            }
        }
    }

    /// `{"queued_ms":…, "stage_in_ms":…, "run_ms":…, "stage_out_ms":…}` (and `approval_ms` when the outputs waited).
    public var json: JSONValue {
        var o: [String: JSONValue] = ["queued_ms": .int(queuedMS), "stage_in_ms": .int(stageInMS),
                                      "run_ms": .int(runMS), "stage_out_ms": .int(stageOutMS)]
        if let approvalMS { o["approval_ms"] = .int(approvalMS) }
        return .object(o)
    }

    /// Read back from an event's `detail.data["timings"]`; nil when it has none.
    public init?(_ value: JSONValue?) {
        guard case .object(let o)? = value else { return nil }
        func ms(_ k: String) -> Int64? {
            switch o[k] {
            case .int(let v)?: v
            case .double(let d)?: Int64(d)
            default: nil
            }
        }
        self.init()
        queuedMS = ms("queued_ms") ?? 0
        stageInMS = ms("stage_in_ms") ?? 0
        runMS = ms("run_ms") ?? 0
        stageOutMS = ms("stage_out_ms") ?? 0
        approvalMS = ms("approval_ms")
    }

    /// `q=1.2s in=0.3s run=12s out=0.1s` (and `appr=…` when the outputs waited).
    public var compact: String {
        var parts = ["q=\(Self.seconds(queuedMS))", "in=\(Self.seconds(stageInMS))", "run=\(Self.seconds(runMS))",
                     "out=\(Self.seconds(stageOutMS))"]
        if let approvalMS { parts.append("appr=\(Self.seconds(approvalMS))") }
        return parts.joined(separator: " ")
    }

    /// `850ms`, `1.2s`, `75s`, `12m5s`.
    public static func seconds(_ ms: Int64) -> String {
        if ms < 1000 { return "\(ms)ms" }
        if ms < 10_000 { return String(format: "%.1fs", Double(ms) / 1000) }
        let s = ms / 1000
        if s < 600 { return "\(s)s" }
        if s < 36_000 { return "\(s / 60)m\(s % 60)s" }
        return "\(s / 3600)h\((s % 3600) / 60)m"
    }
}
