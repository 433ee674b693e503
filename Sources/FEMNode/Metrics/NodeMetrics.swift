import CoreMetrics
import FEMCore
import Foundation
import Prometheus
import Synchronization

/// The node's metrics (`[metrics]`), recorded through swift-metrics into a swift-prometheus registry of their own
/// (nothing is bootstrapped globally) and rendered in Prometheus's text format for `GET /metrics`.
///
/// Task facts come from one place, the journal (`TaskMetrics`: every committed state change and event, with the
/// journaled times, so a step that began before a restart is measured from its real start). Facts about the node
/// itself (running and queued tasks, the outbox, the broker link, the heartbeat, the disk) are sampled when Prometheus
/// scrapes, so they are never stale. docs/operations.md "Metrics" lists them.
final class NodeMetrics: TaskMetrics, Sendable {
    /// What the daemon says about itself at each scrape.
    struct Sample: Sendable {
        var running = 0
        var queued = 0
        /// Events journaled and not yet confirmed by the broker (nil: the journal could not be read).
        var outbox: Int?
        var brokerConnected = false
        var brokerReconnects = 0
        /// When the broker last confirmed a heartbeat (nil: none yet).
        var lastHeartbeat: Date?
        var freeDiskBytes: UInt64?
        var diskPressure = false
        var draining = false
    }

    let registry = PrometheusCollectorRegistry()
    private let factory: HelpfulPrometheusFactory
    private let started: Date
    private let version: String
    /// Counters whose totals the daemon keeps elsewhere (reconnects): what was already added.
    private let reconnectsSeen = Mutex(0)

    /// Buckets of the step histograms: from a quick stage-in to a day-long run.
    static let stepBuckets: [Duration] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                                          7200, 14_400, 43_200, 86_400].map { .milliseconds(Int64($0 * 1000)) }

    /// Every metric's HELP text; a name missing here is a programming error caught by the tests (promtool).
    static let help: [String: String] = [
        "fem_tasks_total": "Tasks that ended, by outcome (completed, failed, cancelled, declined, rejected) and failure class (none unless failed).",
        "fem_task_step_duration_seconds": "Duration of each task step (stage_in, run, stage_out), from the journaled state changes.",
        "fem_tasks_running": "Tasks holding a slot now (staging in, running or staging out).",
        "fem_tasks_queued": "Tasks waiting to start (for resources, a slot, or an earlier task).",
        "fem_outbox_events": "Events journaled and not yet confirmed by the broker.",
        "fem_broker_connected": "1 while the event publisher is connected to the broker, else 0.",
        "fem_broker_reconnects_total": "Times the event publisher connected to the broker again after losing the connection.",
        "fem_staged_bytes_total": "Bytes moved by stage-in (direction in: downloads, git fetches) and stage-out (direction out: uploads).",
        "fem_disk_free_bytes": "Free bytes on the filesystem of the work dir.",
        "fem_disk_pressure": "1 while the node takes no new tasks because free disk is below node.min_free_mb, else 0.",
        "fem_draining": "1 while the node drains for a stop, else 0.",
        "fem_log_dropped_lines_total": "Log lines dropped because the log could not be written (counted when writes work again).",
        "fem_log_write_failing": "1 while log writes fail and lines are being dropped, else 0.",
        "fem_heartbeat_age_seconds": "Seconds since the broker last confirmed a heartbeat of this node (since the daemon started, before the first).",
        "fem_build_info": "The fem-client version, as a label; the value is always 1.",
    ]

    init(version: String, started: Date = Date()) {
        self.version = version
        self.started = started
        factory = HelpfulPrometheusFactory(registry: registry, help: Self.help, durationBuckets: Self.stepBuckets)
        // Every known series from the start, at 0: rates and alerts work before the first task ends.
        for outcome in [TaskState.completed, .cancelled, .declined, .rejected] {
            _ = counter("fem_tasks_total", [("outcome", outcome.rawValue), ("failure_class", "none")])
        }
        for failure in FailureClass.allCases {
            _ = counter("fem_tasks_total", [("outcome", TaskState.failed.rawValue), ("failure_class", failure.rawValue)])
        }
        for step in TaskMeasures.steps {
            _ = CoreMetrics.Timer(label: "fem_task_step_duration_seconds", dimensions: [("step", step.name)],
                                  factory: factory)
        }
        for direction in [TaskMeasures.Direction.stagedIn, .stagedOut] {
            _ = counter("fem_staged_bytes_total", [("direction", direction.rawValue)])
        }
        _ = counter("fem_broker_reconnects_total")
        _ = counter("fem_log_dropped_lines_total")
        gauge("fem_log_write_failing", 0)
        gauge("fem_build_info", 1, [("version", version)])
        record(Sample())
    }

    // MARK: - TaskMetrics (called by the journal after each commit)

    func stateChanged(_ event: TaskEvent, from: TaskState?, since: Date?) {
        if let step = TaskMeasures.step(leaving: from, to: event.state),
           let seconds = TaskMeasures.duration(since: since, until: event.time) {
            CoreMetrics.Timer(label: "fem_task_step_duration_seconds", dimensions: [("step", step)], factory: factory)
                .recordNanoseconds(Int64((seconds * 1e9).rounded()))
        }
        if event.state.isTerminal {
            let failure = event.state == .failed ? (event.detail.failureClass?.rawValue ?? "unknown") : "none"
            counter("fem_tasks_total", [("outcome", event.state.rawValue), ("failure_class", failure)]).increment()
        }
    }

    func noted(_ event: TaskEvent) {
        guard let (direction, bytes) = TaskMeasures.stagedBytes(event) else { return }
        counter("fem_staged_bytes_total", [("direction", direction.rawValue)]).increment(by: bytes)
    }

    // MARK: - The daemon's own facts

    /// Log writes failed (`failing`), or work again after `dropped` lines were lost.
    func logTrouble(failing: Bool, dropped: Int = 0) {
        gauge("fem_log_write_failing", failing ? 1 : 0)
        if dropped > 0 { counter("fem_log_dropped_lines_total").increment(by: Int64(dropped)) }
    }

    /// The gauges sampled at a scrape.
    func record(_ s: Sample, now: Date = Date()) {
        gauge("fem_tasks_running", Double(s.running))
        gauge("fem_tasks_queued", Double(s.queued))
        if let outbox = s.outbox { gauge("fem_outbox_events", Double(outbox)) }
        gauge("fem_broker_connected", s.brokerConnected ? 1 : 0)
        let added = reconnectsSeen.withLock { seen -> Int in
            defer { seen = max(seen, s.brokerReconnects) }
            return max(0, s.brokerReconnects - seen)
        }
        if added > 0 { counter("fem_broker_reconnects_total").increment(by: Int64(added)) }
        gauge("fem_heartbeat_age_seconds", max(0, now.timeIntervalSince(s.lastHeartbeat ?? started)))
        if let free = s.freeDiskBytes { gauge("fem_disk_free_bytes", Double(free)) }
        gauge("fem_disk_pressure", s.diskPressure ? 1 : 0)
        gauge("fem_draining", s.draining ? 1 : 0)
    }

    /// The exposition after sampling: Prometheus text format 0.0.4.
    func exposition(_ s: Sample) -> [UInt8] {
        record(s)
        var buffer: [UInt8] = []
        buffer.reserveCapacity(8 * 1024)
        registry.emit(into: &buffer)
        return buffer
    }

    private func counter(_ name: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory)
    }

    private func gauge(_ name: String, _ value: Double, _ dimensions: [(String, String)] = []) {
        CoreMetrics.Gauge(label: name, dimensions: dimensions, factory: factory).record(value)
    }
}

/// swift-metrics over swift-prometheus's registry, giving each metric its HELP text (the stock
/// `PrometheusMetricsFactory` leaves it empty, which `promtool check metrics` refuses).
struct HelpfulPrometheusFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    let help: [String: String]
    let durationBuckets: [Duration]

    private func text(_ label: String) -> String { help[label] ?? "" }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(name: label, labels: dimensions, help: text(label))
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(name: label, labels: dimensions, help: text(label))
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(name: label, labels: dimensions, help: text(label)) }
        return registry.makeValueHistogram(name: label, labels: dimensions,
                                           buckets: durationBuckets.map { $0 / .seconds(1) },
                                           help: text(label))
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(name: label, labels: dimensions, help: text(label))
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(name: label, labels: dimensions, buckets: durationBuckets, help: text(label))
    }

    // The node's metrics live as long as the daemon: nothing is ever destroyed (the frontends made per event
    // share the registry's one series per name and labels).
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
