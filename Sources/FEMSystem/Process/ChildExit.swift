import CLinux
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The end of one child process, reaped by the `EventReactor` when its pidfd turns readable: no thread waits for
/// it. Any number of tasks may wait; a wait with a time limit (`wait(upTo:)`) or a cancelled one gives up without
/// disturbing the others.
public final class ChildExit: Sendable {
    public let pid: Int32

    private struct State {
        var status: ExitStatus?
        var nextID = 0
        var waiters: [Int: CheckedContinuation<ExitStatus?, Never>] = [:]
    }
    private let state = Mutex(State())

    init(pid: Int32) { self.pid = pid }

    /// The status, if the child was reaped already.
    public var status: ExitStatus? { state.withLock { $0.status } }

    func complete(_ status: ExitStatus) {
        let waiters = state.withLock { s -> [CheckedContinuation<ExitStatus?, Never>] in
            guard s.status == nil else { return [] }
            s.status = status
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        waiters.forEach { $0.resume(returning: status) }
    }

    /// Waits for the exit, however long it takes (cancelling the calling task does not end this wait).
    public func wait() async -> ExitStatus {
        if let status { return status }
        return await withCheckedContinuation { (c: CheckedContinuation<ExitStatus?, Never>) in
            register(c)
        } ?? .unknown("the child's end was not observed")
    }

    /// Waits for the exit at most `limit`; nil when the time passed or the calling task was cancelled first.
    public func wait(upTo limit: Duration) async -> ExitStatus? {
        if let status { return status }
        return await withTaskGroup(of: ExitStatus?.self) { group in
            group.addTask { await self.waitCancellably() }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? self.status
        }
    }

    private func waitCancellably() async -> ExitStatus? {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<ExitStatus?, Never>) in
                register(c, id: id, unlessCancelled: true)
            }
        } onCancel: {
            let c = self.state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume(returning: nil)
        }
    }

    private func register(_ c: CheckedContinuation<ExitStatus?, Never>, id: Int? = nil, unlessCancelled: Bool = false) {
        let now = state.withLock { s -> ExitStatus?? in
            if let status = s.status { return .some(status) }
            if unlessCancelled && Task.isCancelled { return .some(nil) }
            let key: Int
            if let id { key = id } else {
                s.nextID += 1
                key = s.nextID
            }
            s.waiters[key] = c
            return nil
        }
        if let now { c.resume(returning: now) }
    }
}

extension ChildProcess {
    /// Starts watching a child of this process for its exit: the reactor reaps it the moment it ends. Call once per
    /// child, right after spawning it (a second reaper would find nothing to reap).
    public static func watchExit(_ pid: Int32) -> ChildExit {
        let exit = ChildExit(pid: pid)
        let pidfd = fem_pidfd_open(pid)
        if pidfd >= 0, let reactor = EventReactor.shared {
            let token = reactor.watch(pidfd, closeOnRemove: true) {
                guard let status = reap(pid, block: false) else { return true }  // not yet: a spurious wake-up
                exit.complete(status)
                return false
            }
            if token != nil { return exit }
            close(pidfd)
        } else if pidfd < 0, errno == ESRCH {
            // Gone so far that not even a zombie is left: someone else reaped it.
            exit.complete(reap(pid, block: false) ?? .unknown("already reaped elsewhere"))
            return exit
        }
        // No pidfds (Linux < 5.3) or no epoll: a thread of its own waits, as before the reactor.
        let thread = Thread {
            nameThread("fem-wait")
            exit.complete(reap(pid, block: true) ?? .unknown("already reaped elsewhere"))
        }
        thread.name = "fem-wait-\(pid)"
        thread.stackSize = 256 << 10
        thread.start()
        return exit
    }

    /// waitpid for one child: its status; nil when it has not ended yet (`block: false`). A child that is not ours
    /// to reap (ECHILD: reaped elsewhere) is `.unknown`, never a made-up signal.
    static func reap(_ pid: Int32, block: Bool) -> ExitStatus? {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, block ? 0 : WNOHANG)
            if r == pid { break }
            if r == 0 { return nil }
            if r == -1 && errno == EINTR { continue }
            return block ? .unknown("waitpid: \(String(cString: strerror(errno)))") : .unknown("already reaped elsewhere")
        }
        let termSig = status & 0x7f
        if termSig == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(termSig)
    }
}

extension ChildProcess {
    /// Observes the end of any process (a child or not) without reaping it: nil when it is gone already. Its
    /// status is not known to the observer (`.unknown`).
    public static func observeExit(_ pid: Int32) -> ChildExit? {
        guard pid > 1 else { return nil }
        let pidfd = fem_pidfd_open(pid)
        guard pidfd >= 0 else { return nil }
        let exit = ChildExit(pid: pid)
        guard let reactor = EventReactor.shared,
              reactor.watch(pidfd, closeOnRemove: true, {
                  exit.complete(.unknown("ended (observed, not reaped here)"))
                  return false
              }) != nil else {
            close(pidfd)
            return nil
        }
        return exit
    }

    /// Waits until every process in `pids` has ended, or `limit` passed, or the calling task was cancelled: true
    /// when all ended. Event-driven (pidfds), never a poll. At most 256 processes are watched (a descriptor each);
    /// the rest are taken to end with them.
    public static func awaitExits(of pids: [Int32], upTo limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        let watches = pids.prefix(256).compactMap(observeExit)
        for watch in watches {
            let left = deadline - ContinuousClock.now
            guard left > .zero, await watch.wait(upTo: left) != nil else { return false }
        }
        return true
    }
}
