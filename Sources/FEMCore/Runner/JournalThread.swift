import Foundation
import Synchronization

/// One dedicated thread that runs the runner's actor and every journal write the runner makes, in the order they
/// were asked for.
///
/// The `Journal` is synchronous (SQLite through GRDB): a write waits up to the busy timeout (10 s) while another
/// process holds the write lock (`fem-client outputs approve`), and a full disk makes every write slow to fail. On
/// Swift's cooperative pool, which has one thread per core (two on a small node), such a wait would stall every task
/// of the process: the consumer's handoffs, the supervisors, the publisher's wake-ups. On this thread it stalls only
/// the runner's own bookkeeping, which waits for the journal anyway.
///
/// It is a `SerialExecutor` (the `Runner` actor's `unownedExecutor`), and it runs plain closures too (`submit`, `run`)
/// for journal calls made outside the actor (a supervisor's log readers, a stage's progress), in one FIFO order with
/// the actor's jobs: a note submitted before a state change is journaled before it.
public final class JournalThread: SerialExecutor, Sendable {
    private enum Work: Sendable {
        case job(UnownedJob)
        case block(@Sendable () -> Void)
    }

    private let queue = Mutex<[Work]>([])
    private let wake = DispatchSemaphore(value: 0)
    private let threadID = Mutex<ObjectIdentifier?>(nil)

    /// The thread the daemon's runner uses unless it is given another (tests share it too).
    public static let shared = JournalThread(name: "fem-journal")

    public init(name: String) {
        let thread = Thread { [self] in self.loop() }
        thread.name = name
        threadID.withLock { $0 = ObjectIdentifier(thread) }
        thread.start()
    }

    /// True on this thread (the runner's actor and its journal writes run here).
    public var isCurrent: Bool {
        let current = ObjectIdentifier(Thread.current)
        return threadID.withLock { $0 == current }
    }

    public func checkIsolated() {
        precondition(isCurrent, "expected to run on the journal thread")
    }

    private func loop() {
        while true {
            wake.wait()
            let batch = queue.withLock { work -> [Work] in
                defer { work = [] }
                return work
            }
            for item in batch {
                switch item {
                case .job(let job): job.runSynchronously(on: asUnownedSerialExecutor())
                case .block(let body): body()
                }
            }
        }
    }

    private func push(_ work: Work) {
        queue.withLock { $0.append(work) }
        wake.signal()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        push(.job(UnownedJob(job)))
    }

    /// Runs `body` on this thread, after everything asked for before it; the caller does not wait.
    public func submit(_ body: @escaping @Sendable () -> Void) {
        push(.block(body))
    }

    /// Runs `body` on this thread and hands its result to the calling task, which is suspended meanwhile (its
    /// thread is free for other work).
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit { continuation.resume(with: Result { try body() }) }
        }
    }
}
