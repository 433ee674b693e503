import FEMCore
import FEMJournal
import FEMSystem
import Foundation
import Testing

/// `[metrics]`: a real Prometheus (test.sh's, scripts/dev-prometheus.sh) scrapes a real daemon while it runs tasks
/// sent through the real broker, and its HTTP API shows the task counters and the step histograms.
@Suite(.serialized) struct MetricsTests {
    static let metricsOn = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n"

    @Test func prometheusScrapesTaskCountersAndStepHistogramsDuringARun() throws {
        let prometheus = try PrometheusServer()
        let node = try TestNode("metrics", extra: TestNode.hostProcesses + Self.metricsOn)
        try node.start()
        let address = try node.metricsAddress()
        try prometheus.addTarget(address, node: node.id)
        defer { prometheus.removeTarget(node: node.id) }
        // The first scrape of a new target comes about 5 s after it was listed.
        let up = try prometheus.waitFor("up{node=\"\(node.id)\"}", timeout: 30) { $0 == 1 }
        #expect(up == 1)
        let connected = try prometheus.waitFor("fem_broker_connected{node=\"\(node.id)\"}") { $0 == 1 }
        #expect(connected == 1, "the event publisher is connected")

        let op = try Operator(node: node)
        // Long enough to be scraped while they run (1 scrape a second).
        let completed = (0..<3).map { _ in Tasks.task(["/bin/sleep", "1.5"]) }
        let failed = Tasks.task(["/bin/sh", "-c", "sleep 0.5; exit 3"])
        for t in completed + [failed] { try op.submit(t) }
        try op.confirmPublished()
        let running = try prometheus.waitFor("fem_tasks_running{node=\"\(node.id)\"}") { $0 > 0 }
        #expect(running > 0 && running <= 2, "max_concurrent_tasks is 2")
        // Two slots for four 1.5 s tasks: two wait at first, longer than a scrape interval.
        let queued = try prometheus.waitFor("max_over_time(fem_tasks_queued{node=\"\(node.id)\"}[2m])") { $0 >= 1 }
        #expect(queued >= 1, "\(queued) queued")
        try op.waitForFinal((completed + [failed]).map(Tasks.id))
        #expect(completed.allSatisfy { op.finalState(of: Tasks.id($0))?.state == .completed })
        #expect(op.finalState(of: Tasks.id(failed))?.detail.failureClass == .taskFailure)

        let n = "node=\"\(node.id)\""
        // Our 4 tasks, and any a test elsewhere broadcast to every node on the shared broker meanwhile (key `all`):
        // Prometheus must agree exactly with what the node's journal holds, ours included.
        let journal = try SQLiteJournal(path: "\(node.dir)/var/journal.sqlite", nodeID: node.id)
        func counts() throws -> JournalFacts { try JournalFacts(journal) }
        let facts = try counts()
        for t in completed { #expect(facts.ended[Tasks.id(t)] == "completed/none") }
        #expect(facts.ended[Tasks.id(failed)] == "failed/task_failure")
        let foreign = facts.ended.count - 4
        if foreign > 0 { print("MetricsTests: \(foreign) task(s) broadcast by other tests also ran on this node") }
        try prometheus.waitFor("fem_tasks_total{\(n),outcome=\"completed\"}") { $0 == Double(try counts().outcomes["completed/none"] ?? 0) }
        #expect(try prometheus.value("fem_tasks_total{\(n),outcome=\"completed\"}") >= 3)
        try prometheus.waitFor("fem_tasks_total{\(n),outcome=\"failed\",failure_class=\"task_failure\"}") {
            $0 == Double(try counts().outcomes["failed/task_failure"] ?? 0)
        }
        #expect(try prometheus.value("fem_tasks_total{\(n),outcome=\"failed\",failure_class=\"task_failure\"}") >= 1)
        try prometheus.waitFor("sum(fem_tasks_total{\(n)})") { $0 == Double(try counts().ended.count) }
        for step in ["stage_in", "run", "stage_out"] {
            try prometheus.waitFor("fem_task_step_duration_seconds_count{\(n),step=\"\(step)\"}") {
                $0 == Double(try counts().steps[step]?.count ?? 0)
            }
            #expect(try prometheus.value("fem_task_step_duration_seconds_count{\(n),step=\"\(step)\"}") >= 4,
                    "our 4 tasks went through \(step)")
        }
        // Measured from the journaled state changes: the sums match the journal's times (to their milliseconds), and
        // hold the three 1.5 s runs and the 0.5 s one.
        let now = try counts()
        for step in ["stage_in", "run", "stage_out"] {
            let sum = try prometheus.value("fem_task_step_duration_seconds_sum{\(n),step=\"\(step)\"}")
            let expected = now.steps[step]?.reduce(0, +) ?? 0
            #expect(abs(sum - expected) < 0.002 * Double(now.steps[step]?.count ?? 0) + 0.001,
                    "\(step): \(sum) s in Prometheus, \(expected) s in the journal")
        }
        let runSeconds = try prometheus.value("fem_task_step_duration_seconds_sum{\(n),step=\"run\"}")
        #expect(runSeconds >= 5 && runSeconds < 30, "run time sum \(runSeconds) s")
        let under1s = try prometheus.value("fem_task_step_duration_seconds_bucket{\(n),step=\"run\",le=\"1.0\"}")
        #expect(under1s == Double(now.steps["run"]?.filter { $0 <= 1 }.count ?? -1),
                "only the failed task's run (and foreign ones) under a second")
        #expect(try prometheus.waitFor("fem_tasks_running{\(n)}") { $0 == 0 } == 0)
        #expect(try prometheus.waitFor("fem_outbox_events{\(n)}") { $0 == 0 } == 0, "every event confirmed")
        #expect(try prometheus.value("fem_heartbeat_age_seconds{\(n)}") < 10, "heartbeats every 2 s")
        #expect(try prometheus.value("fem_disk_free_bytes{\(n)}") > 0)

        // The exposition itself passes promtool's checks (HELP texts, _total suffixes, units, histogram layout).
        let check = try Shell.run(["/bin/bash", "-c",
                                   "set -o pipefail; curl -sf http://\(address)/metrics | promtool check metrics"])
        #expect(check.status == 0, "promtool check metrics: \(check.output)")
        // GET /metrics only: everything else is 404.
        for (method, path) in [("GET", "/"), ("GET", "/metrics/x"), ("POST", "/metrics"), ("PUT", "/metrics"),
                               ("GET", "/debug")] {
            let status = try Shell.run(["/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                                        "http://\(address)\(path)"]).output
            #expect(status == "404", "\(method) \(path) answered \(status)")
        }
        // The metrics are served through the drain and stop with the daemon.
        node.stop()
        #expect(node.log.contains("NOTE  stopped"))
        let gone = try Shell.run(["/usr/bin/curl", "-s", "-o", "/dev/null", "http://\(address)/metrics"])
        #expect(gone.status != 0, "nothing listens after the stop")
    }

    /// Bytes staged: a task file downloaded from nginx (in) and outputs uploaded to its WebDAV (out), counted as
    /// what really arrived on each side.
    @Test func stagedBytesCountDownloadsAndUploads() throws {
        let prometheus = try PrometheusServer()
        let web = try TestEnv.webDir()
        let prefix = "metrics-\(UUID().uuidString.prefix(8).lowercased())"
        let served = "\(web)/files/\(prefix)/input.bin"
        try FileManager.default.createDirectory(atPath: "\(web)/files/\(prefix)", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let content = (0..<123_457).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try Data(content).write(to: URL(fileURLWithPath: served))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: served)
        defer { try? FileManager.default.removeItem(atPath: "\(web)/files/\(prefix)") }
        var digest = SHA256()
        digest.update(content)
        let node = try TestNode("metrics-bytes", extra: TestNode.hostProcesses + Self.metricsOn + """
            [stage_in]
            file_allowed_urls = ["http://127.0.0.1:18080/files/"]
            [outputs]
            allowed_urls = ["http://127.0.0.1:18080/dav/"]
            [credentials.files-login]
            username = "fem-files"
            password_file = "\(web)/password-fem-files"
            urls = ["http://127.0.0.1:18080/files/"]
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["http://127.0.0.1:18080/dav/"]
            """)
        try node.start()
        let address = try node.metricsAddress()
        try prometheus.addTarget(address, node: node.id)
        defer { prometheus.removeTarget(node: node.id) }
        let n = "node=\"\(node.id)\""
        try prometheus.waitFor("up{\(n)}", timeout: 30) { $0 == 1 }

        var t = Tasks.task(["/bin/sh", "-c", "cp \"$FEM_SRC_DIR\"/input.bin \"$FEM_OUTPUT_DIR\"/copy.bin && "
                            + "head -c 5000 /dev/zero > \"$FEM_OUTPUT_DIR\"/zeros.bin"])
        if case .object(var plan) = t["plan"] {
            plan["outputs"] = .array([["pattern": "*.bin"]])
            plan["source"] = .object(["files": .array([.object([
                "url": .string("http://127.0.0.1:18080/files/\(prefix)/input.bin"), "path": "input.bin",
                "sha256": .string(digest.finalizeHex()), "credentials": "files-login"])])])
            t["plan"] = .object(plan)
        }
        t["stage_out"] = .object(["url": .string("http://127.0.0.1:18080/dav/\(prefix)"), "credentials": "upload-login"])
        let op = try Operator(node: node)
        try op.submit(t)
        try op.confirmPublished()
        try op.waitForFinal([Tasks.id(t)])
        let final = op.finalState(of: Tasks.id(t))
        #expect(final?.state == .completed, "\(String(describing: final?.detail))")

        // What arrived on the WebDAV server (the outputs and their manifest), wherever the node put them below it.
        let dav = "\(web)/dav/\(prefix)"
        let uploaded = (FileManager.default.enumerator(atPath: dav)?.compactMap { $0 as? String } ?? [])
            .compactMap { try? FileManager.default.attributesOfItem(atPath: "\(dav)/\($0)") }
            .filter { ($0[.type] as? FileAttributeType) == .typeRegular }
            .reduce(0) { $0 + (($1[.size] as? Int) ?? 0) }
        #expect(uploaded > 123_457 + 5000, "copy.bin, zeros.bin and manifest.json arrived (\(uploaded) bytes)")
        #expect(try prometheus.waitFor("fem_staged_bytes_total{\(n),direction=\"in\"}") { $0 == 123_457 } == 123_457)
        let out = try prometheus.waitFor("fem_staged_bytes_total{\(n),direction=\"out\"}") { $0 > 0 }
        #expect(out == Double(uploaded), "Prometheus \(out) bytes out, the server got \(uploaded)")
    }

    /// The broker link as Prometheus sees it: connected, then 0 while the node's broker is down (the heartbeat ages),
    /// then connected again with one reconnect counted. A broker of the test's own, so other tests keep theirs.
    @Test func brokerOutageShowsInConnectedReconnectsAndHeartbeatAge() throws {
        let prometheus = try PrometheusServer()
        // A port of its own (the broker also uses port+1000 and port+20000), away from test.sh's 5699 and the
        // restart test's 5698.
        guard let port = (5731...5790).first(where: { p in
            [p, p + 1000, p + 20_000].allSatisfy { !TCPPort.acceptsConnections(host: "127.0.0.1", port: UInt16($0)) }
        }) else { throw HarnessError("no free port for a broker of the test's own in 5731...5790") }
        let broker = try OwnBroker(port: port)
        let node = try TestNode("metrics-link", brokerDir: broker.dir, port: broker.port, extra: Self.metricsOn)
        try node.start()
        let address = try node.metricsAddress()
        try prometheus.addTarget(address, node: node.id)
        defer { prometheus.removeTarget(node: node.id) }
        let n = "node=\"\(node.id)\""
        try prometheus.waitFor("fem_broker_connected{\(n)}", timeout: 30) { $0 == 1 }
        #expect(try prometheus.value("fem_broker_reconnects_total{\(n)}") == 0)

        try broker.run("stop")
        try prometheus.waitFor("fem_broker_connected{\(n)}") { $0 == 0 }
        // Heartbeats every 2 s: none is confirmed while the broker is away.
        try prometheus.waitFor("fem_heartbeat_age_seconds{\(n)}") { $0 > 4 }
        try broker.run("start")
        try prometheus.waitFor("fem_broker_connected{\(n)}", timeout: 60) { $0 == 1 }
        #expect(try prometheus.waitFor("fem_broker_reconnects_total{\(n)}") { $0 >= 1 } == 1)
        #expect(try prometheus.waitFor("fem_heartbeat_age_seconds{\(n)}") { $0 < 4 } < 4)
        #expect(try prometheus.value("fem_outbox_events{\(n)}") == 0)
    }

    /// A `listen` address that cannot be bound stops the daemon at its start, saying why.
    @Test func anAddressInUseStopsTheDaemonWithTheReason() throws {
        let prometheus = try PrometheusServer()
        guard let taken = URL(string: prometheus.url)?.port else { throw HarnessError("no port in \(prometheus.url)") }
        let node = try TestNode("metrics-busy", extra: "\n[metrics]\nlisten = \"127.0.0.1:\(taken)\"\n")
        let out = try Shell.run(["/usr/bin/timeout", "60", try TestEnv.binary("fem-client"), "daemon", "--config",
                                 node.configPath])
        #expect(out.status != 0 && out.status != 124, "the daemon stopped by itself (status \(out.status))")
        #expect(node.log.contains("metrics: cannot serve on 127.0.0.1:\(taken) ([metrics] listen)"), "\(node.log)")
    }

    /// An unauthenticated endpoint on the network is the admin's explicit choice: the daemon refuses to start with
    /// a non-loopback `listen` unless `allow_remote = true`, naming the key.
    @Test func aNonLoopbackListenIsRefusedWithoutAllowRemote() throws {
        let node = try TestNode("metrics-remote", extra: "\n[metrics]\nlisten = \"0.0.0.0:9464\"\n")
        // Bounded: a daemon that wrongly accepted the config would run until stopped.
        let out = try Shell.run(["/usr/bin/timeout", "30", try TestEnv.binary("fem-client"), "daemon", "--config",
                                 node.configPath])
        #expect(out.status != 0)
        #expect(out.output.contains("metrics.listen: 0.0.0.0:9464 is not a loopback address"), "\(out.output)")
        #expect(out.output.contains("metrics.allow_remote = true"))
        #expect(!node.log.contains("metrics: serving"), "nothing was served")
        let check = try node.run(["check"])
        #expect(check.status != 0 && check.output.contains("metrics.listen: 0.0.0.0:9464"), "\(check.output)")
    }

    /// The example alert rules in config/ are valid Prometheus rules.
    @Test func exampleAlertRulesPassPromtool() throws {
        let out = try Shell.run(["/usr/bin/promtool", "check", "rules",
                                 "\(TestEnv.repoRoot)/config/prometheus-alerts.yml"])
        #expect(out.status == 0, "\(out.output)")
        #expect(out.output.contains("SUCCESS"))
    }
}

/// What a node's journal says about its ended tasks: outcome/class per task, and each step's durations from the
/// journaled state-change times (the independent account Prometheus is compared with).
struct JournalFacts {
    var ended: [String: String] = [:]
    var outcomes: [String: Int] = [:]
    var steps: [String: [Double]] = [:]

    init(_ journal: SQLiteJournal) throws {
        for task in try journal.tasks(states: nil, limit: 10_000) {
            let states = try journal.history(task.taskID).filter { $0.kind == .state }
            for (left, entered) in zip(states, states.dropFirst()) {
                if let step = TaskMeasures.steps.first(where: { $0.state == left.state })?.name,
                   entered.state != left.state {
                    steps[step, default: []].append(entered.time.timeIntervalSince(left.time))
                }
            }
            guard let last = states.last, last.state.isTerminal else { continue }
            let key = "\(last.state.rawValue)/\(last.state == .failed ? last.detail.failureClass?.rawValue ?? "unknown" : "none")"
            ended[task.taskID] = key
            outcomes[key, default: 0] += 1
        }
    }
}

extension TestNode {
    /// Where the daemon serves its metrics: its log says so once it listens (port 0 is the system's choice).
    func metricsAddress(timeout: Double = 30) throws -> String {
        var found: String?
        try eventually("the daemon's log to say where it serves metrics", timeout: timeout) {
            if let line = log.split(separator: "\n").first(where: { $0.contains("metrics: serving http://") }),
               let start = line.range(of: "http://"), let end = line.range(of: "/metrics", range: start.upperBound..<line.endIndex) {
                found = String(line[start.upperBound..<end.lowerBound])
            }
            return found != nil
        }
        guard let found else { throw HarnessError("no metrics address in the log") }
        return found
    }
}

/// test.sh's Prometheus (scripts/dev-prometheus.sh): a test lists its node in the targets folder (file_sd) and reads
/// the results through the HTTP API.
struct PrometheusServer {
    let dir: String
    let url: String

    init() throws {
        let env = ProcessInfo.processInfo.environment
        guard let dir = env["FEM_TEST_PROMETHEUS_DIR"], let url = env["FEM_TEST_PROMETHEUS_URL"],
              FileManager.default.fileExists(atPath: "\(dir)/targets") else {
            throw HarnessError("FEM_TEST_PROMETHEUS_DIR / FEM_TEST_PROMETHEUS_URL are not set or the folder has no "
                               + "targets/: run the tests with `bash test.sh`, which starts Prometheus "
                               + "(scripts/dev-prometheus.sh)")
        }
        self.dir = dir
        self.url = url
        let ready = try Shell.run(["/usr/bin/curl", "-sf", "\(url)/-/ready"])
        if ready.status != 0 { throw HarnessError("Prometheus at \(url) is not ready: \(ready.output)") }
    }

    /// Lists `address` as a target with the label `node`; written whole (a rename), so Prometheus never reads half.
    func addTarget(_ address: String, node: String) throws {
        let body = #"[{"targets": ["\#(address)"], "labels": {"node": "\#(node)"}}]"#
        let temporary = "\(dir)/targets/.\(node).tmp"
        try body.write(toFile: temporary, atomically: false, encoding: .utf8)
        try FileManager.default.moveItem(atPath: temporary, toPath: "\(dir)/targets/\(node).json")
    }

    func removeTarget(node: String) {
        try? FileManager.default.removeItem(atPath: "\(dir)/targets/\(node).json")
    }

    /// The single value of an instant query, or nil when it has no result yet.
    func query(_ promQL: String) throws -> Double? {
        let out = try Shell.run(["/usr/bin/curl", "-sfG", "\(url)/api/v1/query", "--data-urlencode", "query=\(promQL)"])
        guard out.status == 0 else { throw HarnessError("query \(promQL) failed: \(out.output)") }
        guard case .object(let root) = try JSONValue.parse(Data(out.output.utf8)),
              root["status"]?.stringValue == "success", case .object(let data)? = root["data"],
              case .array(let result)? = data["result"] else {
            throw HarnessError("query \(promQL): unexpected answer \(out.output)")
        }
        guard let first = result.first else { return nil }
        guard result.count == 1 else { throw HarnessError("query \(promQL) has \(result.count) series: \(out.output)") }
        guard case .object(let series) = first, case .array(let value)? = series["value"], value.count == 2,
              let text = value[1].stringValue, let number = Double(text) else {
            throw HarnessError("query \(promQL): no value in \(out.output)")
        }
        return number
    }

    /// The value now; a query without a result fails.
    func value(_ promQL: String) throws -> Double {
        guard let v = try query(promQL) else { throw HarnessError("query \(promQL) has no result") }
        return v
    }

    /// Polls until the query has a value that `done` accepts (scrapes come once a second); fails after `timeout`
    /// seconds with the last value seen.
    @discardableResult
    func waitFor(_ promQL: String, timeout: Double = 20, _ done: (Double) throws -> Bool) throws -> Double {
        let deadline = Date().addingTimeInterval(timeout)
        var last: Double?
        while true {
            last = try query(promQL)
            if let last, try done(last) { return last }
            if Date() > deadline {
                throw HarnessError("timed out after \(Int(timeout)) s waiting for \(promQL); last value: "
                                   + (last.map { "\($0)" } ?? "none"))
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }
}
