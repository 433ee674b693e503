import FEMCore
import FEMJournal
import FEMSystem
import FEMTransport
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// The receiver daemon: broker → receiver → journal → runner, with the outbox publisher, a heartbeat, the disk watch
/// and the airlock's approval watcher. Each is a `Service`; one `ServiceGroup` runs them and shuts them down in
/// reverse order on SIGTERM/SIGINT (see `NodeApplication.services`).
public enum NodeDaemon {
    public static func run(config: NodeConfig) async throws {
        ignoreSIGPIPE()
        ignoreSIGHUP()  // until HangupService handles it: reopen the log, reload the config
        // Each task holds at most one blocking call at a time (a transfer, a spawn, a cleanup): twice the task
        // slots and a margin, so a timed-out task's cleanup never queues behind other tasks' long transfers.
        BlockingPool.configureShared(size: max(16, 2 * config.maxConcurrentTasks + 4))
        let app = try NodeApplication(config: config)
        try await app.run()
    }
}

/// The daemon's parts, built once (the composition root is `NodeAssembly`), and the services that run them.
struct NodeApplication: Sendable {
    let config: NodeConfig
    let logger: Logger
    let node: NodeAssembly
    let publisher: AMQPEventPublisher
    let source: AMQPTaskSource
    let receiver: Receiver
    let notices: NodeNotices
    let disk: DiskWatch
    let admission: Admission
    let endpoint: AMQPEndpoint
    /// `[metrics]`: nil when off.
    let metrics: NodeMetrics?
    let pools: PoolWork
    /// The node's attributes, for constraints and heartbeats.
    let fingerprint: NodeFingerprint
    /// receiver.log, reopened on SIGHUP; the status file and systemd; the config a reload replaces.
    let logSink: LineLogHandler.Sink?
    let operations: Operations
    let live: LiveConfig
    var reload: ConfigReload {
        ConfigReload(live: live, runner: node.runner, journal: node.journal, operations: operations, logger: logger)
    }

    init(config: NodeConfig) throws {
        self.config = config
        let logTrouble = LogTrouble()
        let (makeHandler, sink) = try LineLogHandler.factory(
            path: config.logFile, trouble: logTrouble,
            options: .init(maxMB: config.logMaxMB, keep: config.logKeep, json: config.logFormat == "json"))
        logSink = sink
        let logger = Logger(label: "fem-client", factory: makeHandler)
        self.logger = logger
        let endpoint = try config.endpoint()
        self.endpoint = endpoint
        let live = LiveConfig(config)
        self.live = live

        // The journal first: the publisher reads its outbox, and the runner wakes the publisher when it adds events.
        // The metrics hear every state change and event the journal commits.
        let metrics = config.metricsListen.map { _ in NodeMetrics(version: FEMVersion.string) }
        self.metrics = metrics
        try NodeAssembly.prepareWorkDir(config)
        let journal = try SQLiteJournal(path: config.journalPath, nodeID: config.nodeID,
                                        metrics: metrics ?? NoTaskMetrics())
        let publisher = AMQPEventPublisher(endpoint: endpoint, outbox: journal, logger: logger)
        self.publisher = publisher
        let disk = DiskWatch(workDir: config.workDir, logFile: config.logFile, minFreeMB: config.minFreeMB)
        self.disk = disk
        let ended = TaskEndedHook()
        node = try NodeAssembly(config: config, journal: journal, logger: logger,
                                diskPressure: { since in disk.pressure(since: since) },
                                taskEnded: { id, state, detail in ended.call(id, state, detail) }) { publisher.wake() }
        let pools = PoolWork(config: config, journal: journal, runner: node.runner, publisher: publisher, logger: logger,
                             datasets: { live.value.datasets.keys })
        self.pools = pools
        ended.set { id, state, detail in pools.taskEnded(id, state: state, detail: detail) }
        let notices = NodeNotices(nodeID: config.nodeID, publisher: publisher)
        self.notices = notices
        logTrouble.set { news in
            switch news {
            case .dropping(let error):
                metrics?.logTrouble(failing: true)
                notices.send("log_dropping", "the node cannot write its log \(config.logFile) (\(error)); log lines are "
                             + "dropped and counted until writes work again", ["error": .string(error)])
            case .recovered(let dropped, let error):
                metrics?.logTrouble(failing: false, dropped: dropped)
                notices.send("log_recovered", "the node writes its log again; \(dropped) line(s) were dropped while "
                             + "writes failed (\(error))", ["dropped_lines": .int(Int64(dropped))])
            }
        }
        let admission = Admission(disk: disk)
        self.admission = admission
        // Labels and datasets as the last config reload left them.
        let fingerprint = NodeFingerprint(config: { live.value }, launchers: node.registry.names)
        self.fingerprint = fingerprint
        let operations = Operations(config: config, broker: "\(endpoint)", launchers: node.registry.names, logger: logger)
        self.operations = operations
        source = AMQPTaskSource(endpoint: endpoint, nodeID: config.nodeID, prefetch: config.prefetch,
                                maxMessageBytes: config.maxMessageBytes, logger: logger, pools: config.pools,
                                poolRoom: { admission.refusal == nil ? pools.room() : 0 },
                                connection: { operations.broker(connected: $0) })
        pools.attach(source)
        receiver = Receiver(nodeID: config.nodeID, maxMessageBytes: config.maxMessageBytes, journal: node.journal,
                            runner: node.runner, logger: logger, admission: { admission.refusal },
                            notify: { reason, message, data in notices.send(reason, message, data) },
                            orchestrators: Set(config.orchestrators), pools: pools.placement,
                            // The node's own account too: a task it passed back to its pool may come back to it.
                            poolPeers: Set(config.poolPeers).union(endpoint.user.isEmpty ? [] : [endpoint.user]),
                            attributes: { fingerprint.current }) { publisher.wake() }
    }

    /// Started in this order and shut down in the reverse one: the runner drains first (the receiver still reads
    /// cancels and returns new deliveries to the broker, heartbeats say `draining`, the airlock still releases), then
    /// the watchers stop, then the receiver stops consuming, and the publisher, last, sends what the journal holds.
    var services: [ServiceGroupConfiguration.ServiceConfiguration] {
        var list: [ServiceGroupConfiguration.ServiceConfiguration] = [
            // SIGHUP (log reopen, config reload): first, so it is handled until the very end of a stop.
            .init(service: HangupService(app: self)),
            .init(service: PublisherService(publisher: publisher, logger: logger)),
            .init(service: ReceiverService(receiver: receiver, source: source)),
            .init(service: EveryService(name: "heartbeat", interval: .seconds(config.heartbeatSeconds)) { [self] in
                await sendHeartbeat()
                // A journal write (which may wait for SQLite's lock) and folder removals: not on the cooperative pool.
                _ = try? await offload("housekeeping") { [self] in housekeeping() }
            }),
            // Airlock decisions are journaled by `fem-client outputs approve|reject` (another process): look for them.
            .init(service: EveryService(name: "approvals", interval: .seconds(1), delayFirst: true) { [node, publisher] in
                await node.runner.resumeDecided()
                publisher.wake()
            }),
            // Disk pressure: measured every second; a change is logged, sent as a notice and in the next heartbeat.
            .init(service: EveryService(name: "disk-watch", interval: .seconds(1)) { [self] in
                await checkDisk()
            }),
            .init(service: SecondSignalService(logger: logger), failureTerminationBehavior: .cancelGroup),
            .init(service: RunnerService(app: self)),
        ]
        // The metrics near the start (stopped late): they watch the drain to its end.
        list.insert(contentsOf: metricsServices, at: 0)
        // The steward's console: stopped late too (decisions are still taken while tasks drain).
        list.insert(contentsOf: consoleServices, at: 0)
        // systemd's watchdog: first, so the graceful shutdown reaches it last (it pings through the drain).
        if let interval = operations.systemd.watchdogPingInterval {
            list.insert(.init(service: WatchdogService(operations: operations, interval: interval)), at: 0)
        }
        return list
    }

    var metricsServices: [ServiceGroupConfiguration.ServiceConfiguration] {
        guard let metrics, let listen = config.metricsListen else { return [] }
        return [.init(service: MetricsService(listen: listen, metrics: metrics, sample: { [self] in await metricsSample() },
                                              logger: logger))]
    }

    var consoleServices: [ServiceGroupConfiguration.ServiceConfiguration] {
        guard let console = config.console else { return [] }
        return [.init(service: ConsoleService(settings: console, nodeID: config.nodeID, workDir: config.workDir,
                                              journalPath: config.journalPath, logger: logger,
                                              blockOnFindings: { [live] in live.value.outputChecks.blockOnFindings }) {
            [node, publisher] in
            await node.runner.resumeDecided()
            publisher.wake()
        })]
    }

    /// The node's own facts for a scrape (task facts come from the journal as they happen).
    func metricsSample() async -> NodeMetrics.Sample {
        var s = NodeMetrics.Sample()
        s.running = await node.runner.activeCount
        s.queued = await node.runner.queuedCount
        s.outbox = try? node.journal.outboxCount()
        let link = publisher.link
        s.brokerConnected = link.connected
        s.brokerReconnects = link.reconnects
        s.lastHeartbeat = link.lastHeartbeatConfirmed
        s.freeDiskBytes = freeDiskBytes(at: config.workDir)
        s.diskPressure = disk.pressure != nil
        s.draining = admission.draining
        return s
    }

    func run() async throws {
        let launchers = node.registry.names.joined(separator: ",")
        logger.notice("""
            fem-client \(FEMVersion.string) starting: node \(config.nodeID), broker \(endpoint), launchers \(launchers), \
            work dir \(config.workDir), up to \(config.maxConcurrentTasks) tasks at once
            """)
        await fingerprint.refresh()
        await node.runner.checkConstraints(against: { [fingerprint] in fingerprint.current })
        await node.runner.recover()
        operations.versions(await engineVersions(config))
        if config.enabledLaunchers.contains("docker") {
            // Docker API calls: blocking, so on the pool.
            _ = try? await offload("foreign-containers") { [config, node, logger] in
                reportForeignContainers(config: config, journal: node.journal, logger: logger)
            }
        }
        // A drain may take node.drain_seconds; past that and a margin the group cancels what is left.
        var group = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                              logger: logger)
        group.maximumGracefulShutdownDuration = .seconds(config.drainSeconds + 30)
        do {
            try await ServiceGroup(configuration: group).run()
        } catch is StopNow {
            // The second signal: said in the log by the service that caught it.
        }
        logger.notice("stopped")
    }

    func sendHeartbeat() async {
        var beat = await node.heartbeat(version: FEMVersion.string, pressure: admission.refusal,
                                        draining: admission.draining)
        beat.attributes = await fingerprint.refresh()
        // Datasets as the last config reload left them.
        beat.datasets = live.value.datasets.sorted { $0.key < $1.key }.map { DatasetAdvert(id: $0.key, labels: $0.value.labels) }
        operations.heartbeat(beat, awaitingApproval: try? node.journal.count(states: [.awaitingApproval]),
                             draining: admission.draining)
        if let body = try? JSONEncoder.fem.encode(beat) {
            publisher.publishHeartbeat(routingKey: beat.routingKey, body: body)
        }
    }

    /// Pruning old documents and sandboxes past their retention, with each heartbeat.
    func housekeeping() {
        let cutoff = Date().addingTimeInterval(-Double(config.journalKeepDays) * 86_400)
        if let pruned = try? node.journal.pruneDocuments(finishedBefore: cutoff), pruned > 0 {
            logger.info("pruned the documents of \(pruned) tasks that ended over \(config.journalKeepDays) days ago")
        }
        let removed = node.sandboxes.sweep(journal: node.journal)
        if !removed.isEmpty {
            logger.info("removed \(removed.count) sandboxes past their retention: \(removed.joined(separator: ", "))")
        }
    }

    func checkDisk() async {
        guard let change = disk.check() else { return }
        if let why = change {
            logger.warning("disk pressure: no new tasks until space returns (\(why))")
            notices.send("disk_pressure", "the node takes no new tasks until space returns: \(why)",
                         ["pressure": .string(why)])
        } else {
            logger.notice("disk pressure ended: taking tasks again")
            notices.send("disk_pressure_ended", "space returned; the node takes tasks again")
        }
        await sendHeartbeat()
    }
}

/// Sends the journal's outbox; on shutdown (it stops last) it sends what is left, for up to 5 s.
struct PublisherService: Service {
    let publisher: AMQPEventPublisher
    let logger: Logger

    func run() async throws {
        publisher.start()
        try? await gracefulShutdown()
        let finished = await publisher.stop(timeout: .seconds(5))
        if Task.isCancelled {
            logger.notice("stopping at once: events not yet sent stay in the journal and go out at the next start")
        } else if !finished {
            logger.warning("the event publisher did not finish within 5 s; events still in the journal go out at the next start")
        }
    }
}

/// Consumes task and control messages until shutdown reaches it (after the drain).
struct ReceiverService: Service {
    let receiver: Receiver
    let source: AMQPTaskSource

    func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await receiver.run(source)
            } onGracefulShutdown: {
                source.stop()
            }
        } onCancel: {
            source.stop()
        }
    }
}

/// Runs `body` every `interval` until shutdown; a body in progress finishes first.
struct EveryService: Service {
    let name: String
    let interval: Duration
    var delayFirst = false
    let body: @Sendable () async -> Void

    init(name: String, interval: Duration, delayFirst: Bool = false, body: @escaping @Sendable () async -> Void) {
        self.name = name
        self.interval = interval
        self.delayFirst = delayFirst
        self.body = body
    }

    func run() async throws {
        var first = true
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if !(first && delayFirst) { await body() }
            first = false
            // The sleep ends early on shutdown (or cancellation).
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return
            }
        }
    }
}

/// The drain: on the first SIGTERM/SIGINT (the group's graceful shutdown, which reaches this service first) the
/// node takes no new tasks and lets running ones go on for node.drain_seconds; work still running then is left to
/// run and is followed again by the next start (its handle is in the journal).
struct RunnerService: Service {
    let app: NodeApplication

    func run() async throws {
        // Until shutdown (cancellation: the group stops at once, nothing to drain).
        do { try await gracefulShutdown() } catch { return }
        let drainSeconds = app.config.drainSeconds
        guard app.admission.startDraining() else { return }
        app.operations.draining()
        app.logger.notice("stopping: no longer taking tasks; running ones may go on for up to \(drainSeconds) s")
        app.notices.send("draining", "the node stops: it takes no new tasks and lets running ones go on for up to "
                         + "\(drainSeconds) s", ["drain_seconds": .int(Int64(drainSeconds))])
        await app.sendHeartbeat()
        let left = await app.node.runner.drain(limit: .seconds(drainSeconds))
        await app.node.runner.shutdown()
        let said = left == 0 ? "drained: no task is running; stopping"
            : "drain time is up with \(left) task(s) still active; stopping (work still running is recovered "
              + "at the next start)"
        app.logger.notice("\(said)")
    }
}

struct StopNow: Error, CustomStringConvertible {
    var description: String { "stopped by a second signal" }
}

/// The first SIGTERM/SIGINT starts the drain (the service group's own handler); a second one stops at once: this
/// service then fails, and its failure cancels the group.
struct SecondSignalService: Service {
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        // Its own turn to shut down comes right after the runner's drain: the loop ends then.
        try await cancelWhenGracefulShutdown {
            var seen = 0
            for await sig in signals {
                seen += 1
                if seen == 1 {
                    logger.notice("signal \(sig): draining (a second signal stops at once)")
                    continue
                }
                logger.notice("signal \(sig) again: stopping now (work still running is recovered at the next start)")
                throw StopNow()
            }
        }
    }
}

/// Containers labelled with this node whose task the journal does not know are left alone, and said so.
func reportForeignContainers(config: NodeConfig, journal: any Journal, logger: Logger) {
    let engine = DockerEngine(socket: config.docker.socket)
    do {
        for id in try engine.containers(labels: ["org.fem-client.node": config.nodeID]) {
            let task = try engine.inspectContainer(id)?.labels["org.fem-client.task"] ?? "?"
            let known = (try? journal.task(task)) ?? nil
            if known == nil {
                logger.notice("container \(id.prefix(12)) is labelled for task \(task), which this node's journal does not know; left alone")
            }
        }
    } catch {
        logger.warning("cannot list containers: \(error)")
    }
}
