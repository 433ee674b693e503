import FEMSystem
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Threads of this process now (every thread is a folder of /proc/self/task).
func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// Threads of this process with the kernel name `name` (/proc/self/task/TID/comm; 15 bytes at most). Other suites
/// run in parallel in this process, so a test counts its own threads by name, not all of them.
func threads(named name: String) -> Int {
    let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    let wanted = String(name.utf8.prefix(15)) ?? name
    return tids.filter {
        (try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == wanted
    }.count
}

/// Waits (bounded) until `condition` holds; false when the deadline passed first.
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// A value shared with pool jobs (a Mutex itself cannot be captured: it is not copyable).
final class Shared<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ value: T) { self.value = Mutex(value) }
    func withLock<R>(_ body: (inout T) -> R) -> R { value.withLock { body(&$0) } }
}

/// A gate blocking pool jobs until it is opened.
final class Gate: Sendable {
    private let open = Mutex(false)
    private let wake = DispatchSemaphore(value: 0)
    func pass() {
        if open.withLock({ $0 }) { return }
        wake.wait()
        wake.signal()
    }
    func release() {
        open.withLock { $0 = true }
        wake.signal()
    }
}

@Suite(.serialized)
struct BlockingPoolTests {
    @Test func neverRunsMoreThanItsSize() async throws {
        let pool = BlockingPool(size: 3, name: "test-bounded")
        let running = Shared((now: 0, most: 0))
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<(3 + 9) {
                group.addTask {
                    try await pool.run {
                        running.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
                        Thread.sleep(forTimeInterval: 0.02)
                        running.withLock { $0.now -= 1 }
                        return i
                    }
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(results.sorted() == Array(0..<12), "every job ran once")
        #expect(running.withLock { $0.most } <= 3, "at most 3 jobs at once")
        #expect(pool.peakConcurrency == 3)
        #expect(pool.threadCount == 3, "threads are kept, never more than the size")
    }

    @Test func aJobCancelledBeforeItStartsNeverRuns() async throws {
        let pool = BlockingPool(size: 1, name: "test-cancel-queued")
        let gate = Gate()
        let blocker = Task { try await pool.run { gate.pass() } }
        #expect(await eventually { pool.peakConcurrency == 1 }, "the blocker holds the only thread")
        let ran = Shared(false)
        let queued = Task { try await pool.runIfActive { _ in ran.withLock { $0 = true } } }
        #expect(await eventually { pool.queued == 1 }, "the second job waits in the queue")
        queued.cancel()
        await #expect(throws: CancellationError.self) { try await queued.value }
        #expect(pool.queued == 0, "the cancelled job left the queue")
        gate.release()
        try await blocker.value
        // One more job after it: had the cancelled one stayed queued, it would have run before this one.
        try await pool.run {}
        #expect(!ran.withLock { $0 }, "the cancelled job's body never ran")

        // Cancelled before it was even submitted: not run either.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await pool.runIfActive { _ in ran.withLock { $0 = true } }
        }
        await #expect(throws: CancellationError.self) { try await early.value }
        #expect(!ran.withLock { $0 })
    }

    @Test func aRunningJobSeesItsFlagSet() async throws {
        let pool = BlockingPool(size: 2, name: "test-cancel-running")
        let started = Shared(false)
        let job = Task {
            try await pool.runIfActive { flag -> Bool in
                started.withLock { $0 = true }
                // Wakes at once on cancel (no polling); 30 s would fail the test's time limit below.
                return flag.sleep(seconds: 30)
            }
        }
        #expect(await eventually { started.withLock { $0 } })
        let t0 = ContinuousClock.now
        job.cancel()
        let slept = try await job.value
        #expect(!slept, "the body saw the cancel")
        #expect(ContinuousClock.now - t0 < .seconds(15), "and stopped on the cancel, not after its 30 s")
    }

    @Test func offloadKeepsItsCancelContract() async throws {
        let started = Shared(false)
        let job = Task {
            try await offload("test", cancellable: { flag -> Int in
                started.withLock { $0 = true }
                _ = flag.sleep(seconds: 30)
                throw SystemError("sleep", errno: EINTR, "stopped")
            })
        }
        #expect(await eventually { started.withLock { $0 } })
        job.cancel()
        await #expect(throws: OperationCancelled.self) { try await job.value }
        // The plain offload runs even from a cancelled task (cleanup must happen).
        let cleanup = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await offload("cleanup") { 42 }
        }
        #expect(try await cleanup.value == 42)
    }

    @Test func twoHundredCallsAddNoThreadPerCall() async throws {
        let pool = BlockingPool.shared
        // Warm the pool up to its size, then measure: 200 calls in flight at once must not add a thread each.
        let gate = Gate()
        let before = threadCount()
        let inFlight = Shared(0)
        let jobs = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<200 {
                    group.addTask {
                        try await offload("test-growth") {
                            inFlight.withLock { $0 += 1 }
                            gate.pass()
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        #expect(await eventually { inFlight.withLock { $0 } == pool.size }, "the pool's threads all took a call")
        let during = threads(named: "fem-blocking")
        #expect(pool.queued >= 200 - pool.size, "the rest wait in the queue")
        gate.release()
        try await jobs.value
        #expect(inFlight.withLock { $0 } == 200)
        #expect(pool.threadCount <= pool.size)
        #expect(during == pool.size, "200 calls in flight ran on the pool's \(pool.size) threads, not one each: \(during)")
        #expect(threads(named: "fem-blocking") == pool.size, "and the pool keeps its threads (no thread per call)")
        _ = before
    }
}

/// The latch a broker connection's thread opens when it ends (the publisher's async stop awaits it).
struct LatchTests {
    @Test func waitsUntilOpenedOrTheTimeLimit() async throws {
        let latch = Latch()
        let t0 = ContinuousClock.now
        #expect(await latch.wait(upTo: .milliseconds(100)) == false)
        #expect(ContinuousClock.now - t0 >= .milliseconds(100))
        let waiter = Task { await latch.wait(upTo: .seconds(30)) }
        let opener = Thread { latch.open() }
        opener.start()
        #expect(await waiter.value == true)
        #expect(latch.waitBlocking(seconds: 0) == true, "stays open")
        #expect(await latch.wait(upTo: .zero) == true)
    }

    @Test func aCancelledWaitEndsAtOnce() async throws {
        let latch = Latch()
        let waiter = Task { await latch.wait(upTo: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(20))
        let t0 = ContinuousClock.now
        waiter.cancel()
        #expect(await waiter.value == false)
        #expect(ContinuousClock.now - t0 < .seconds(30), "ended on the cancel, not after its 60 s")
    }
}
