import Foundation

/// A cancel request for a blocking call that runs on a thread of its own (libcurl, libgit2, a child process): the
/// call's progress callbacks read it and stop the call. Set once, never cleared; safe from any thread.
public final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = false
    private var actions: [@Sendable () -> Void] = []

    public init() {}

    public var isCancelled: Bool { lock.withLock { set } }

    public func cancel() {
        let run = lock.withLock { () -> [@Sendable () -> Void] in
            guard !set else { return [] }
            set = true
            defer { actions = [] }
            return actions
        }
        run.forEach { $0() }
    }

    /// Runs `action` when the flag is set (at once if it already is).
    public func onCancel(_ action: @escaping @Sendable () -> Void) {
        let now = lock.withLock { () -> Bool in
            if set { return true }
            actions.append(action)
            return false
        }
        if now { action() }
    }

    /// Sleeps up to `seconds`, waking early when the flag is set. False when it was cancelled.
    public func sleep(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if isCancelled { return false }
            Thread.sleep(forTimeInterval: min(0.05, max(0, deadline.timeIntervalSinceNow)))
        }
        return !isCancelled
    }
}

/// A blocking call stopped because its task was cancelled.
public struct OperationCancelled: Error, CustomStringConvertible, Sendable {
    public var what: String
    public init(_ what: String) { self.what = what }
    public var description: String { "\(what): cancelled" }
}
