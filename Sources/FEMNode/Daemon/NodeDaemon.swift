import FEMCore
import FEMSystem
import FEMTransport
import Foundation
import Logging

/// The receiver daemon: broker → receiver → journal → runner, with the outbox publisher and a heartbeat.
public enum NodeDaemon {
    public static func run(config: NodeConfig) async throws {
        ignoreSIGPIPE()
        let logTrouble = LogTrouble()
        let makeHandler = try LineLogHandler.factory(path: config.logFile, trouble: logTrouble)
        let logger = Logger(label: "fem-client", factory: makeHandler)
        let endpoint = try config.endpoint()

        // The publisher needs the journal and the runner needs the publisher's wake-up: break the cycle with a box.
        let wake = WakeBox()
        let disk = DiskWatch(workDir: config.workDir, logFile: config.logFile, minFreeMB: config.minFreeMB)
        let node = try NodeAssembly(config: config, logger: logger, diskPressure: { since in disk.pressure(since: since) }) { wake.fire() }
        let publisher = AMQPEventPublisher(endpoint: endpoint, outbox: node.journal, logger: logger)
        wake.set { publisher.wake() }
        publisher.start()
        let notices = NodeNotices(nodeID: config.nodeID, publisher: publisher)
        logTrouble.set { news in
            switch news {
            case .dropping(let error):
                notices.send("log_dropping", "the node cannot write its log \(config.logFile) (\(error)); log lines are "
                             + "dropped and counted until writes work again", ["error": .string(error)])
            case .recovered(let dropped, let error):
                notices.send("log_recovered", "the node writes its log again; \(dropped) line(s) were dropped while "
                             + "writes failed (\(error))", ["dropped_lines": .int(Int64(dropped))])
            }
        }
        let admission = Admission(disk: disk)

        let launchers = node.registry.names.joined(separator: ",")
        logger.notice("""
            fem-client \(FEMVersion.string) starting: node \(config.nodeID), broker \(endpoint), launchers \(launchers), \
            work dir \(config.workDir), up to \(config.maxConcurrentTasks) tasks at once
            """)
        await node.runner.recover()
        if config.enabledLaunchers.contains("docker") {
            reportForeignContainers(config: config, journal: node.journal, logger: logger)
        }

        let source = AMQPTaskSource(endpoint: endpoint, nodeID: config.nodeID, prefetch: config.prefetch,
                                    maxMessageBytes: config.maxMessageBytes, logger: logger)
        let receiver = Receiver(nodeID: config.nodeID, maxMessageBytes: config.maxMessageBytes, journal: node.journal,
                                runner: node.runner, logger: logger, admission: { admission.refusal },
                                notify: { reason, message, data in notices.send(reason, message, data) },
                                orchestrators: Set(config.orchestrators)) {
            publisher.wake()
        }

        // Disk pressure: measured every second; a change is logged, sent as a notice and in the next heartbeat.
        let diskWatch = Task {
            while !Task.isCancelled {
                if let change = disk.check() {
                    if let why = change {
                        logger.warning("disk pressure: no new tasks until space returns (\(why))")
                        notices.send("disk_pressure", "the node takes no new tasks until space returns: \(why)",
                                     ["pressure": .string(why)])
                    } else {
                        logger.notice("disk pressure ended: taking tasks again")
                        notices.send("disk_pressure_ended", "space returned; the node takes tasks again")
                    }
                    let beat = await node.heartbeat(version: FEMVersion.string, pressure: admission.refusal,
                                                    draining: admission.draining)
                    if let body = try? JSONEncoder.fem.encode(beat) {
                        publisher.publishHeartbeat(routingKey: beat.routingKey, body: body)
                    }
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }

        let heartbeat = Task {
            while !Task.isCancelled {
                let beat = await node.heartbeat(version: FEMVersion.string, pressure: admission.refusal,
                                                draining: admission.draining)
                if let body = try? JSONEncoder.fem.encode(beat) {
                    publisher.publishHeartbeat(routingKey: beat.routingKey, body: body)
                }
                let cutoff = Date().addingTimeInterval(-Double(config.journalKeepDays) * 86_400)
                if let pruned = try? node.journal.pruneDocuments(finishedBefore: cutoff), pruned > 0 {
                    logger.info("pruned the documents of \(pruned) tasks that ended over \(config.journalKeepDays) days ago")
                }
                let removed = node.sandboxes.sweep(journal: node.journal)
                if !removed.isEmpty {
                    logger.info("removed \(removed.count) sandboxes past their retention: \(removed.joined(separator: ", "))")
                }
                try? await Task.sleep(for: .seconds(config.heartbeatSeconds))
            }
        }

        // Airlock decisions are journaled by `fem-client outputs approve|reject` (another process): look for them.
        let approvals = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await node.runner.resumeDecided()
                publisher.wake()
            }
        }

        // Drain: the first SIGTERM/SIGINT stops taking tasks (deliveries go back to the broker; cancels are still
        // read), lets running tasks go on for node.drain_seconds, then stops; a second signal stops at once.
        let runner = node.runner
        let drainSeconds = config.drainSeconds
        let signals = SignalWatcher(signals: [SIGTERM, SIGINT]) { sig in
            guard admission.startDraining() else {
                logger.notice("signal \(sig) again: stopping now (work still running is recovered at the next start)")
                source.stop()
                return
            }
            logger.notice("signal \(sig): no longer taking tasks; running ones may go on for up to \(drainSeconds) s")
            notices.send("draining", "the node stops: it takes no new tasks and lets running ones go on for up to "
                         + "\(drainSeconds) s", ["drain_seconds": .int(Int64(drainSeconds))])
            Task {
                let left = await runner.drain(limit: .seconds(drainSeconds))
                await runner.shutdown()
                let said = left == 0 ? "drained: no task is running; stopping"
                    : "drain time is up with \(left) task(s) still active; stopping (work still running is recovered "
                      + "at the next start)"
                logger.notice("\(said)")
                source.stop()
            }
        }
        await receiver.run(source)
        diskWatch.cancel()
        heartbeat.cancel()
        approvals.cancel()
        publisher.stop(timeout: 5)
        signals.cancel()
        logger.notice("stopped")
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

final class WakeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var action: (@Sendable () -> Void)?
    func set(_ a: @escaping @Sendable () -> Void) { lock.withLock { action = a } }
    func fire() { lock.withLock { action }?() }
}

/// Turns SIGTERM/SIGINT into a callback on a dispatch queue.
final class SignalWatcher: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []

    init(signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        for sig in signals {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { handler(sig) }
            s.resume()
            sources.append(s)
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}
