import CLinux
import Foundation
import Synchronization

/// A bounded pool of threads for blocking calls (libcurl, libgit2, cgroup files, SQLite), in the spirit of
/// NIOThreadPool: at most `size` threads, started lazily as work queues up and kept for later work; jobs beyond that
/// wait in FIFO order. The threads are not Swift's cooperative pool (two threads on a two-core node), so a blocked
/// call never stalls async code.
///
/// Two ways in:
/// - `runIfActive`: cancellation-aware. A job whose task is cancelled while it waits in the queue never runs and
///   throws `CancellationError`; a running job gets its `CancelFlag` set (its blocking call reads it and stops).
/// - `run`: always runs, whatever the task's cancellation (cleanup: removing a container, killing a cgroup).
///
/// Long waits (a child's exit, a container's end) do not belong here: they are events (`EventReactor`).
/// Names the calling thread as the kernel sees it (`top -H`, /proc/PID/task/TID/comm; at most 15 bytes).
public func nameThread(_ name: String) {
    fem_name_thread(String(name.utf8.prefix(15)) ?? "fem")
}

public final class BlockingPool: Sendable {
    /// The pool `offload` uses: `configureShared(size:)` if called before its first use, else the environment's
    /// `FEM_BLOCKING_THREADS` (1...256), else 16.
    public static let shared = BlockingPool(
        size: requestedSize.withLock { $0 }
            ?? ProcessInfo.processInfo.environment["FEM_BLOCKING_THREADS"].flatMap(Int.init).map(clamp) ?? 16,
        name: "fem-blocking")

    private static let requestedSize = Mutex<Int?>(nil)
    private static func clamp(_ n: Int) -> Int { min(256, max(1, n)) }

    /// Sets the shared pool's size (1...256), for a daemon's configuration; effective only before the pool's first
    /// use (call it at start-up). Returns the size the shared pool has.
    @discardableResult
    public static func configureShared(size: Int) -> Int {
        requestedSize.withLock { $0 = clamp(size) }
        return shared.size
    }

    public let size: Int
    private let name: String
    private let wakeups = DispatchSemaphore(value: 0)
    private let state = Mutex(State())

    private final class Job: Sendable {
        let id: UInt64
        let flag: CancelFlag
        let work: @Sendable (CancelFlag) -> Void
        /// Resumes the waiter with a CancellationError; called instead of `work` when the job is dropped.
        let drop: @Sendable () -> Void
        init(id: UInt64, flag: CancelFlag, work: @escaping @Sendable (CancelFlag) -> Void,
             drop: @escaping @Sendable () -> Void) {
            self.id = id
            self.flag = flag
            self.work = work
            self.drop = drop
        }
    }

    private struct State {
        var queue: [Job] = []
        var head = 0
        var nextID: UInt64 = 0
        var threads = 0
        var idle = 0
        var busy = 0
        var peakBusy = 0

        mutating func pop() -> Job? {
            guard head < queue.count else { return nil }
            let job = queue[head]
            head += 1
            if head > 64 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            return job
        }
    }

    public init(size: Int, name: String = "fem-blocking") {
        precondition(size > 0, "a BlockingPool needs at least one thread")
        self.size = size
        self.name = name
    }

    /// Threads started so far (never more than `size`).
    public var threadCount: Int { state.withLock { $0.threads } }
    /// Jobs waiting for a thread.
    public var queued: Int { state.withLock { $0.queue.count - $0.head } }
    /// The most jobs that ran at once since the pool was made.
    public var peakConcurrency: Int { state.withLock { $0.peakBusy } }

    /// Runs `body` on a pool thread and returns its result. Cancelling the calling task before the job starts drops
    /// it (`CancellationError`, the body never runs); while it runs, sets the flag the body receives.
    /// `flag` is the one the body receives (the caller may keep it to learn whether a failure was the cancel's).
    public func runIfActive<T: Sendable>(flag: CancelFlag = CancelFlag(),
                                         _ body: @escaping @Sendable (CancelFlag) throws -> T) async throws -> T {
        try await submit(cancellable: true, flag: flag, body)
    }

    /// Runs `body` on a pool thread, whatever happens to the calling task (work that must happen, such as cleanup).
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await submit(cancellable: false, flag: CancelFlag()) { _ in try body() }
    }

    private func submit<T: Sendable>(cancellable: Bool, flag: CancelFlag,
                                     _ body: @escaping @Sendable (CancelFlag) throws -> T) async throws -> T {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        let operation = {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                let job = Job(id: id, flag: flag,
                              work: { flag in continuation.resume(with: Result { try body(flag) }) },
                              drop: { continuation.resume(throwing: CancellationError()) })
                self.enqueue(job, dropIfCancelled: cancellable)
            }
        }
        guard cancellable else { return try await operation() }
        return try await withTaskCancellationHandler(operation: operation) {
            // Set first: an enqueue that has not happened yet sees it (under the same lock) and drops the job.
            flag.cancel()
            let dropped = self.state.withLock { s -> Job? in
                guard let i = s.queue[s.head...].firstIndex(where: { $0.id == id }) else { return nil }
                return s.queue.remove(at: i)
            }
            dropped?.drop()
        }
    }

    private func enqueue(_ job: Job, dropIfCancelled: Bool) {
        let (accepted, startThread) = state.withLock { s -> (Bool, Bool) in
            if dropIfCancelled && job.flag.isCancelled { return (false, false) }
            s.queue.append(job)
            let waiting = s.queue.count - s.head
            guard waiting > s.idle, s.threads < size else { return (true, false) }
            s.threads += 1
            return (true, true)
        }
        guard accepted else {
            job.drop()
            return
        }
        if startThread {
            let thread = Thread { [self] in
                nameThread(name)
                self.worker()
            }
            thread.name = name
            thread.start()
        }
        wakeups.signal()
    }

    private func worker() {
        while true {
            state.withLock { $0.idle += 1 }
            wakeups.wait()
            let job = state.withLock { s -> Job? in
                s.idle -= 1
                guard let job = s.pop() else { return nil }
                s.busy += 1
                s.peakBusy = max(s.peakBusy, s.busy)
                return job
            }
            // A wake-up whose job was dropped (cancelled in the queue) finds nothing: wait again.
            guard let job else { continue }
            job.work(job.flag)
            state.withLock { $0.busy -= 1 }
        }
    }
}
