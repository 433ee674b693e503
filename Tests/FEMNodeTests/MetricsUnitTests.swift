@testable import FEMNode
import FEMCore
import Foundation
import Testing

/// `[metrics]`: the listen address as parsed values, and what the journal's events do to the exposition.
struct MetricsUnitTests {
    @Test func listenAddressesAreParsedNotResolved() throws {
        let v4 = try MetricsListen.parse("127.0.0.1:9464")
        #expect(v4 == MetricsListen(host: "127.0.0.1", port: 9464, isLoopback: true))
        #expect(try MetricsListen.parse("127.8.9.10:1").isLoopback)
        #expect(try MetricsListen.parse("[::1]:9464") == MetricsListen(host: "::1", port: 9464, isLoopback: true))
        #expect(try MetricsListen.parse("[::ffff:127.0.0.1]:9464").isLoopback, "an IPv4-mapped loopback address")
        #expect(try MetricsListen.parse("localhost:0") == MetricsListen(host: "localhost", port: 0, isLoopback: true))
        #expect(try MetricsListen.parse("0.0.0.0:9464").isLoopback == false)
        #expect(try MetricsListen.parse("[::]:9464").isLoopback == false)
        #expect(try MetricsListen.parse("10.1.2.3:9464").isLoopback == false)
        #expect(try MetricsListen.parse("[::1]:9464").description == "[::1]:9464")
        for bad in ["9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80",
                    "::1:9464", "[127.0.0.1]:9464", "metrics.example.org:9464", "127.0.0.1 :9464", "127.1:9464x",
                    "http://127.0.0.1:9464", "[::1%lo]:9464", ":9464"] {
            #expect(throws: (any Error).self, "\(bad) is refused") { try MetricsListen.parse(bad) }
        }
    }

    @Test func aNonLoopbackListenNeedsAllowRemote() {
        let refused = NodeConfigTests.problems(NodeConfigTests.toml() + "\n[metrics]\nlisten = \"0.0.0.0:9464\"\n")
        #expect(refused.count == 1)
        #expect(refused.first?.hasPrefix("metrics.listen: 0.0.0.0:9464 is not a loopback address") == true)
        #expect(refused.first?.contains("metrics.allow_remote = true") == true)
        let allowed = NodeConfigTests.problems(NodeConfigTests.toml()
                                               + "\n[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n")
        #expect(allowed.isEmpty)
        let badHost = NodeConfigTests.problems(NodeConfigTests.toml() + "\n[metrics]\nlisten = \"node.example:9464\"\n")
        #expect(badHost.first?.hasPrefix("metrics.listen: \"node.example:9464\": the host must be an IP address") == true)
        let unknown = NodeConfigTests.problems(NodeConfigTests.toml() + "\n[metrics]\nport = 9464\n")
        #expect(unknown.contains { $0.hasPrefix("metrics.port: is not a known key") })
    }

    @Test func metricsAreOffUnlessListenIsSet() throws {
        #expect(try NodeConfig.parse(NodeConfigTests.toml(), source: "t", environment: [:]).metricsListen == nil)
        let on = try NodeConfig.parse(NodeConfigTests.toml() + "\n[metrics]\nlisten = \"[::1]:9464\"\n", source: "t",
                                      environment: [:])
        #expect(on.metricsListen == MetricsListen(host: "::1", port: 9464, isLoopback: true))
        let env = try NodeConfig.parse(NodeConfigTests.toml(), source: "t",
                                       environment: ["FEM_METRICS_LISTEN": "127.0.0.1:9500"])
        #expect(env.metricsListen?.port == 9500, "FEM_METRICS_LISTEN overrides the file, as every key")
    }

    /// Steps are measured from the journaled time the task entered them; outcomes counted with their class.
    @Test func journaledEventsBecomeCountersAndStepHistograms() {
        let m = NodeMetrics(version: "9.9.9")
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        func event(_ state: TaskState, _ at: Double, kind: EventKind = .state, detail: EventDetail = .none) -> TaskEvent {
            TaskEvent(kind: kind, nodeID: "n", taskID: "t", executionID: "e", state: state, seq: 1,
                      time: t0.addingTimeInterval(at), detail: detail)
        }
        m.stateChanged(event(.stagingIn, 1), from: .received, since: t0)
        m.noted(event(.stagingIn, 1.5, kind: .progress, detail: EventDetail(data: ["bytes": 1000, "path": "a"])))
        m.stateChanged(event(.running, 2), from: .stagingIn, since: t0.addingTimeInterval(1))
        m.noted(event(.running, 3, kind: .progress, detail: EventDetail(data: ["bytes": 7])))  // the tool's: not staged
        m.stateChanged(event(.stagingOut, 12), from: .running, since: t0.addingTimeInterval(2))
        m.noted(event(.stagingOut, 12.5, kind: .progress, detail: EventDetail(data: ["bytes": 250])))
        m.stateChanged(event(.failed, 13, detail: EventDetail(failureClass: .timeout)), from: .stagingOut,
                       since: t0.addingTimeInterval(12))
        m.stateChanged(event(.rejected, 13), from: nil, since: nil)
        m.logTrouble(failing: false, dropped: 4)
        var s = NodeMetrics.Sample()
        s.running = 2
        s.queued = 5
        s.outbox = 3
        s.brokerConnected = true
        s.brokerReconnects = 2
        s.lastHeartbeat = Date().addingTimeInterval(-30)
        s.freeDiskBytes = 123_456_789
        let text = String(decoding: m.exposition(s), as: UTF8.self)
        let lines = Set(text.split(separator: "\n").map(String.init))
        for expected in [
            #"fem_tasks_total{outcome="failed",failure_class="timeout"} 1"#,
            #"fem_tasks_total{outcome="rejected",failure_class="none"} 1"#,
            #"fem_tasks_total{outcome="completed",failure_class="none"} 0"#,
            #"fem_task_step_duration_seconds_count{step="stage_in"} 1"#,
            #"fem_task_step_duration_seconds_sum{step="run"} 10.0"#,
            #"fem_task_step_duration_seconds_bucket{step="run",le="10.0"} 1"#,
            #"fem_task_step_duration_seconds_bucket{step="run",le="5.0"} 0"#,
            #"fem_task_step_duration_seconds_sum{step="stage_out"} 1.0"#,
            #"fem_staged_bytes_total{direction="in"} 1000"#,
            #"fem_staged_bytes_total{direction="out"} 250"#,
            "fem_tasks_running 2.0", "fem_tasks_queued 5.0", "fem_outbox_events 3.0", "fem_broker_connected 1.0",
            "fem_broker_reconnects_total 2", "fem_log_dropped_lines_total 4",
            #"fem_build_info{version="9.9.9"} 1.0"#,
            "# TYPE fem_tasks_total counter", "# TYPE fem_task_step_duration_seconds histogram",
        ] {
            #expect(lines.contains(expected), "\(expected) in:\n\(text)")
        }
        #expect(text.contains("# HELP fem_heartbeat_age_seconds "))
        // Every family has its HELP text.
        let families = Set(lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] })
        let helped = Set(lines.filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
        #expect(families == helped && families.count == NodeMetrics.help.count)
        // A later scrape adds only the reconnects it has not seen yet.
        s.brokerReconnects = 3
        let again = String(decoding: m.exposition(s), as: UTF8.self)
        #expect(again.contains("fem_broker_reconnects_total 3\n"))
    }
}
