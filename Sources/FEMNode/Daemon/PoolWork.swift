import FEMCore
import FEMJournal
import FEMTransport
import Foundation
import Logging
import Synchronization

/// The node's side of work pools (`node.pools`): how many pool tasks it could start now, whether it takes one that
/// arrived, how one it cannot take goes back (or, after `node.pool_max_passes`, to the dead-letter queue with an
/// `unplaceable` event), and the retry of a pool task that failed here with a class its `retry` lists.
final class PoolWork: Sendable {
    let config: NodeConfig
    let journal: SQLiteJournal
    let runner: Runner
    let publisher: AMQPEventPublisher
    let logger: Logger
    /// Set once the task source exists (it needs `room`): paused after a pass, so the task goes to another node.
    private let source = Mutex<AMQPTaskSource?>(nil)
    /// The documents of pool tasks taken here that may be retried, as they arrived: the journal drops a task's
    /// stage-out token when it ends, and a retry elsewhere needs it. After a restart the journal's copy is used.
    private let retryable = Mutex<[String: JSONValue]>([:])
    /// Tasks whose last `gate` refusal here was temporary (no free slot, resources busy now): their pass-on does not
    /// count toward `pool_max_passes`, since the task would fit once a running job ends. Set by `gate`, taken by `pass`.
    private let waitRefused = Mutex<Set<String>>([])
    /// After passing a task on, the pools are not asked for work for this long.
    static let passPauseSeconds = 2.0

    /// The dataset ids configured now (`[datasets]` applies live on a reload).
    let datasets: @Sendable () -> Dictionary<String, NodeConfig.Dataset>.Keys

    init(config: NodeConfig, journal: SQLiteJournal, runner: Runner, publisher: AMQPEventPublisher, logger: Logger,
         datasets: @escaping @Sendable () -> Dictionary<String, NodeConfig.Dataset>.Keys) {
        self.datasets = datasets
        self.config = config
        self.journal = journal
        self.runner = runner
        self.publisher = publisher
        self.logger = logger
    }

    func attach(_ source: AMQPTaskSource) { self.source.withLock { $0 = source } }

    /// How many more tasks this node could start now: `max_concurrent_tasks` less what the journal holds running or
    /// waiting to run (`received`, `queued`). A plain journal read (WAL: never waits for a writer), safe on the
    /// consumer thread. Whether a task's resources fit is judged when it arrives (`resourcesRefusal`).
    func room() -> Int {
        guard let counts = try? journal.counts() else { return 0 }
        return max(0, config.maxConcurrentTasks - counts.running - counts.queued)
    }

    var placement: PoolPlacement {
        PoolPlacement(gate: { [self] spec, document, pool in await gate(spec, document: document, pool: pool) },
                      pass: { [self] message, document, pool, reason in
                          pass(message, document: document, pool: pool, reason: reason)
                      })
    }

    /// Why this node does not take the pool task now; nil when it does.
    func gate(_ spec: TaskSpec, document: JSONValue, pool: String) async -> String? {
        if let ticket = spec.pool, ticket.tried.contains(config.nodeID) {
            return "an earlier attempt of this task failed on this node; another node should try it"
        }
        if !config.enabledLaunchers.contains(spec.plan.launcher) {
            return "launcher \(spec.plan.launcher) is not enabled on this node"
        }
        let here = Set(datasets())
        let missing = spec.plan.inputs.filter { !here.contains($0) }
        if !missing.isEmpty {
            return "dataset \(missing.joined(separator: ", ")) is not on this node"
        }
        if let (why, temporary) = await resourcesRefusal(spec) {
            if temporary { _ = waitRefused.withLock { $0.insert(spec.taskID) } }
            return why
        }
        let free = room()
        if free < 1 {
            _ = waitRefused.withLock { $0.insert(spec.taskID) }
            return "no free slot: max_concurrent_tasks is \(config.maxConcurrentTasks) and all are taken"
        }
        // Kept only for a task new here: a duplicate id (already journaled, running or ended) never ends again on
        // this node, so its document (which may hold stage-out tokens) would stay in the map for good, or replace
        // the running task's own. A task declined at admission ends through `taskEnded`, which drops it.
        let journaled: Bool? = try? (journal.task(spec.taskID) != nil)
        if spec.effectiveRetry != nil || !spec.alternatives.isEmpty, journaled == false {
            retryable.withLock { if $0[spec.taskID] == nil { $0[spec.taskID] = document } }
        }
        return nil
    }

    /// Whether the task's resources fit this node now (`Runner.admission`): one that can never fit here, or that would
    /// have to wait for resources or a slot, goes to another node of the pool (which may fit it, or have room now).
    /// `temporary`: the refusal holds only until a running job ends (`.mustWait`), so it does not count as a pass.
    func resourcesRefusal(_ spec: TaskSpec) async -> (reason: String, temporary: Bool)? {
        switch await runner.admission(for: spec) {
        case .fitsNow: return nil
        case .never(let why): return (why, false)
        case .mustWait:
            let r = spec.plan.resources
            let asked = [r.cpus.map { "cpus \(String(format: "%g", $0))" }, r.memoryMB.map { "memory_mb \($0)" },
                         r.gpus.map { "gpus \($0)" }, r.storageMB.map { "storage_mb \($0)" }].compactMap { $0 }
            return ("no room now: " + (asked.isEmpty ? "no free slot" : "its resources (\(asked.joined(separator: ", "))) "
                                       + "do not fit what is free, or no slot is free"), true)
        }
    }

    /// Returns the task to its pool with this node's reason (or gives it up after `pool_max_passes` passes: the
    /// pool's dead-letter queue and an `unplaceable` event); the delivery is acknowledged once the broker confirmed
    /// the new message (at least once: a connection lost before the ack brings the original back as well).
    /// A temporary refusal (no free slot, resources busy now) is recorded but not counted as a pass: the task would
    /// fit here once a running job ends, so it must not reach the dead-letter queue for that. It cannot loop hot:
    /// this node's pool pulls pause for `passPauseSeconds` after every pass-on, counted or not.
    func pass(_ message: InboundMessage, document: JSONValue, pool: String, reason: String) {
        var ticket = PoolTicket.of(document) ?? PoolTicket(name: pool)
        ticket.name = pool
        let taskIDRead = document["task_id"]?.stringValue
        let temporary = taskIDRead.map { id in waitRefused.withLock { $0.remove(id) != nil } } ?? false
        if temporary {
            // Recorded once per node and reason: a task that waits long must not grow its document pass by pass.
            let kept = String(reason.prefix(PoolTicket.maxReason))
            ticket.declined.removeAll { $0.node == config.nodeID && $0.reason == kept }
        } else {
            ticket.passes += 1
        }
        ticket.declined.append(.init(node: config.nodeID, reason: reason))
        var doc = document.objectValue ?? [:]
        doc["pool"] = ticket.json
        let body = JSONValue.object(doc).encoded()
        source.withLock { $0 }?.pausePools(seconds: Self.passPauseSeconds)
        let taskID = document["task_id"]?.stringValue ?? "?"
        guard ticket.passes >= config.poolMaxPasses else {
            publisher.publishTask(routingKey: WireNames.poolKey(pool), body: body) { [logger] ok in
                if ok {
                    message.ack()
                } else {
                    logger.warning("the broker refused the returned pool task; the delivery goes back as it was",
                                   metadata: ["task": "\(taskID)"])
                    message.requeue()
                }
            }
            return
        }
        let event = unplaceable(document: document, ticket: ticket, pool: pool)
        let eventBody = event.encoded()
        let dead = WireNames.deadPoolQueue(pool)
        logger.warning("pool \(pool): no node took the task after \(ticket.passes) passes; moved to \(dead)",
                       metadata: ["task": "\(taskID)"])
        publisher.publishTask(routingKey: WireNames.deadPoolKey(pool), body: body) { [publisher] ok in
            if ok {
                message.ack()
                publisher.publishDirect(routingKey: event.routingKey, body: eventBody)
            } else {
                message.requeue()
            }
        }
    }

    /// The `unplaceable` event: every node's reason, the passes, and where the task is now.
    func unplaceable(document: JSONValue, ticket: PoolTicket, pool: String) -> TaskEvent {
        let reasons = ticket.declined.map { "\($0.node): \($0.reason)" }.joined(separator: "; ")
        let taskID = document["task_id"]?.stringValue
        var event = TaskEvent(
            kind: .unplaceable, nodeID: config.nodeID,
            taskID: taskID.flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil },
            executionID: document["execution_id"]?.stringValue.flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil },
            state: .declined, seq: 0, time: Date(),
            detail: EventDetail(message: "no node of pool \(pool) could take the task after \(ticket.passes) passes "
                                + "(\(reasons)); it is in \(WireNames.deadPoolQueue(pool))",
                                data: ["pool": .string(pool), "passes": .int(Int64(ticket.passes)),
                                       "declined": ticket.json["declined"] ?? .array([]),
                                       "dead_letter_queue": .string(WireNames.deadPoolQueue(pool))]))
        event.attempt = document["attempt"]?.intValue.map(Int.init) ?? 1
        return event
    }

    /// A pool task that failed here with a class its `retry` lists goes back to its pool for the next attempt, with
    /// this node among those that tried it (so another node takes it where there is one). Called on the runner's
    /// journal thread once the failure is journaled.
    func taskEnded(_ taskID: String, state: TaskState, detail: EventDetail) {
        let kept = retryable.withLock { $0.removeValue(forKey: taskID) }
        guard state == .failed, let failure = detail.failureClass else { return }
        guard let document = kept ?? (try? journal.task(taskID))?.document,
              let spec = try? DocumentReader.readTask(document, requireTaskID: true),
              var ticket = spec.pool,
              // Only back to a pool this node serves (its account may publish there); a `pool` field on a task sent
              // to the node's own queue names no pool of ours.
              config.pools.contains(ticket.name) else { return }
        guard let retry = spec.effectiveRetry, retry.on.contains(failure), spec.attempt < retry.attempts else {
            if let retry = spec.effectiveRetry, retry.on.contains(failure) {
                note(taskID, "not retried: attempt \(spec.attempt) of \(retry.attempts) failed (\(failure.rawValue))")
            }
            nextAlternative(taskID, spec: spec, document: document, ticket: ticket, failure: failure)
            return
        }
        if !ticket.tried.contains(config.nodeID) { ticket.tried.append(config.nodeID) }
        ticket.passes = 0
        ticket.declined = []
        var doc = document.objectValue ?? [:]
        doc["attempt"] = .int(Int64(spec.attempt + 1))
        doc["pool"] = ticket.json
        let pool = ticket.name
        let nextAttempt = spec.attempt + 1
        // The orchestrator is told the task went back only once the broker confirmed it; when the broker refused it
        // (or it was given up after failed connections) it is told the task is not coming back.
        publisher.publishTask(routingKey: WireNames.poolKey(pool), body: JSONValue.object(doc).encoded()) { [self] ok in
            if ok {
                note(taskID, "failed with \(failure.rawValue), which its retry lists: returned to pool \(pool) for "
                     + "attempt \(nextAttempt) of \(retry.attempts), on another node where there is one",
                     data: ["pool": .string(pool), "next_attempt": .int(Int64(nextAttempt))])
            } else {
                logger.error("the broker refused the retry of the task in pool \(pool)", metadata: ["task": "\(taskID)"])
                note(taskID, "failed with \(failure.rawValue), which its retry lists, but attempt \(nextAttempt) could "
                     + "not be sent to pool \(pool) (the broker refused it or could not be reached): the task is not retried",
                     data: ["pool": .string(pool), "next_attempt": .int(Int64(nextAttempt)), "retry_sent": .bool(false)])
            }
        }
    }

    /// AGATA's switch: a pool task with `alternatives` that failed (and is not retried) goes back to its pool with
    /// the next plan, as the next attempt, for another node of the pool.
    func nextAlternative(_ taskID: String, spec: TaskSpec, document: JSONValue, ticket: PoolTicket,
                         failure: FailureClass) {
        guard case .array(let rest)? = document["alternatives"], let next = rest.first,
              let nextPlan = spec.alternatives.first else { return }
        var doc = document.objectValue ?? [:]
        doc["plan"] = next
        doc["alternatives"] = .array(Array(rest.dropFirst()))
        doc["attempt"] = .int(Int64(spec.attempt + 1))
        // Another node runs it: this node's journal holds the task id already (it would be a duplicate here).
        doc["pool"] = PoolTicket(name: ticket.name, tried: ticket.tried.contains(config.nodeID) ? ticket.tried
                                 : ticket.tried + [config.nodeID]).json
        let pool = ticket.name
        let nextAttempt = spec.attempt + 1
        let left = rest.count - 1
        // Told to the orchestrator only once the broker confirmed it (see `taskEnded`).
        publisher.publishTask(routingKey: WireNames.poolKey(pool), body: JSONValue.object(doc).encoded()) { [self] ok in
            if ok {
                note(taskID, "failed with \(failure.rawValue); its next alternative, plan \(nextPlan.id) "
                     + "\(nextPlan.version), goes to pool \(pool) as attempt \(nextAttempt) (\(left) alternative(s) left "
                     + "after it)",
                     data: ["pool": .string(pool), "next_attempt": .int(Int64(nextAttempt)), "next_plan": .string(nextPlan.id)])
            } else {
                logger.error("the broker refused the next alternative of the task in pool \(pool)",
                             metadata: ["task": "\(taskID)"])
                note(taskID, "failed with \(failure.rawValue); its next alternative, plan \(nextPlan.id) "
                     + "\(nextPlan.version), could not be sent to pool \(pool) (the broker refused it or could not be "
                     + "reached): the task is not tried again",
                     data: ["pool": .string(pool), "next_attempt": .int(Int64(nextAttempt)), "next_plan": .string(nextPlan.id),
                            "retry_sent": .bool(false)])
            }
        }
    }

    private func note(_ taskID: String, _ message: String, data: [String: JSONValue]? = nil) {
        logger.info("\(message)", metadata: ["task": "\(taskID)"])
        _ = try? journal.note(taskID, kind: .notice, detail: EventDetail(message: message, data: data), at: Date())
        publisher.wake()
    }
}

/// The runner's end-of-task callback, bound after the runner exists (PoolWork needs the runner).
final class TaskEndedHook: Sendable {
    private let body = Mutex<(@Sendable (String, TaskState, EventDetail) -> Void)?>(nil)

    func set(_ f: @escaping @Sendable (String, TaskState, EventDetail) -> Void) { body.withLock { $0 = f } }

    func call(_ taskID: String, _ state: TaskState, _ detail: EventDetail) {
        body.withLock { $0 }?(taskID, state, detail)
    }
}
