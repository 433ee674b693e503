import Foundation
import Synchronization

/// Opens once (from any thread) and stays open; async code waits for it, with or without a time limit. What a
/// dedicated thread (a broker connection's) signals when it ends, instead of a semaphore a caller blocks on.
public final class Latch: Sendable {
    private struct State {
        var open = false
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var blocked: [DispatchSemaphore] = []
    }
    private let state = Mutex(State())

    public init() {}

    public var isOpen: Bool { state.withLock { $0.open } }

    public func open() {
        let (waiters, blocked) = state.withLock { s -> ([CheckedContinuation<Bool, Never>], [DispatchSemaphore]) in
            guard !s.open else { return ([], []) }
            s.open = true
            defer { s.waiters = [:]; s.blocked = [] }
            return (Array(s.waiters.values), s.blocked)
        }
        waiters.forEach { $0.resume(returning: true) }
        blocked.forEach { $0.signal() }
    }

    /// Waits until open, at most `limit`: true when it opened. A cancelled caller stops waiting (false).
    public func wait(upTo limit: Duration) async -> Bool {
        if isOpen { return true }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.waitCancellably() }
            group.addTask {
                try? await Task.sleep(for: limit)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || self.isOpen
        }
    }

    /// Blocks the calling thread until open, at most `seconds` (for synchronous callers).
    public func waitBlocking(seconds: Double) -> Bool {
        let wake = DispatchSemaphore(value: 0)
        let already = state.withLock { s -> Bool in
            if s.open { return true }
            s.blocked.append(wake)
            return false
        }
        if already { return true }
        return wake.wait(timeout: .now() + max(0, seconds)) == .success || isOpen
    }

    private func waitCancellably() async -> Bool {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { s -> Bool? in
                    if s.open { return true }
                    if Task.isCancelled { return false }
                    s.waiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let c = self.state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume(returning: false)
        }
    }
}
