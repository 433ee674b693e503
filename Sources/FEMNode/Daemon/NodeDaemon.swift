import FEMCore
import FEMSystem
import FEMTransport
import Foundation
import Logging

/// The receiver daemon: broker → receiver → journal → runner, with the outbox publisher and a heartbeat.
public enum NodeDaemon {
    public static func run(config: NodeConfig) async throws {
        ignoreSIGPIPE()
        let makeHandler = try LineLogHandler.factory(path: config.logFile)
        let logger = Logger(label: "fem-client", factory: makeHandler)
        let endpoint = try config.endpoint()

        // The publisher needs the journal and the runner needs the publisher's wake-up: break the cycle with a box.
        let wake = WakeBox()
        let node = try NodeAssembly(config: config, logger: logger) { wake.fire() }
        let publisher = AMQPEventPublisher(endpoint: endpoint, outbox: node.journal, logger: logger)
        wake.set { publisher.wake() }
        publisher.start()

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
                                runner: node.runner, logger: logger) { publisher.wake() }

        let heartbeat = Task {
            while !Task.isCancelled {
                let beat = await node.heartbeat(version: FEMVersion.string)
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

        let signals = SignalWatcher(signals: [SIGTERM, SIGINT]) { sig in
            logger.notice("signal \(sig): no longer taking tasks; stopping (work still running is recovered at the next start)")
            source.stop()
        }
        await receiver.run(source)
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
