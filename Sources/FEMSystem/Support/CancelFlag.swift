import Foundation
import Synchronization

/// A cancel request for a blocking call that runs on a thread of its own (libcurl, libgit2, a child process): the
/// call's progress callbacks read it and stop the call. Set once, never cleared; safe from any thread.
public final class CancelFlag: Sendable {
    private struct State {
        var set = false
        var nextID = 0
        var actions: [Int: @Sendable () -> Void] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    public var isCancelled: Bool { state.withLock { $0.set } }

    public func cancel() {
        let run = state.withLock { s -> [@Sendable () -> Void] in
            guard !s.set else { return [] }
            s.set = true
            defer { s.actions = [:] }
            return s.actions.sorted { $0.key < $1.key }.map(\.value)
        }
        run.forEach { $0() }
    }

    /// Runs `action` when the flag is set (at once if it already is).
    public func onCancel(_ action: @escaping @Sendable () -> Void) {
        _ = register(action)
    }

    /// Registers `action`; nil when the flag was already set (the action then ran at once).
    private func register(_ action: @escaping @Sendable () -> Void) -> Int? {
        let id = state.withLock { s -> Int? in
            if s.set { return nil }
            s.nextID += 1
            s.actions[s.nextID] = action
            return s.nextID
        }
        if id == nil { action() }
        return id
    }

    /// Sleeps up to `seconds` on the calling thread, waking at once when the flag is set (no polling). False when it
    /// was cancelled.
    public func sleep(seconds: Double) -> Bool {
        let wake = DispatchSemaphore(value: 0)
        guard let id = register({ wake.signal() }) else { return false }
        _ = wake.wait(timeout: .now() + max(0, seconds))
        state.withLock { _ = $0.actions.removeValue(forKey: id) }
        return !isCancelled
    }
}

/// A blocking call stopped because its task was cancelled.
public struct OperationCancelled: Error, CustomStringConvertible, Sendable {
    public var what: String
    public init(_ what: String) { self.what = what }
    public var description: String { "\(what): cancelled" }
}
