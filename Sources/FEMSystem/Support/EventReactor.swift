import CLinux
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One thread, one epoll set, for every event the daemon waits on that the kernel can signal through a descriptor:
/// child exits (pidfds) and cgroup v1 OOM notifications (eventfds). Replaces a thread per child and polling loops.
/// The thread starts with the first watch and then sleeps in `epoll_wait` until something happens.
///
/// Handlers run on the reactor's thread: they must be short and never block (read a counter, reap a child, resume
/// a continuation).
public final class EventReactor: Sendable {
    /// Nil only where epoll itself is unavailable (out of descriptors at start-up).
    public static let shared: EventReactor? = EventReactor()

    private struct Registration {
        var fd: Int32
        var closeOnRemove: Bool
        var handler: @Sendable () -> Bool
    }

    private struct State {
        var nextToken: UInt64 = 0
        var registrations: [UInt64: Registration] = [:]
        var started = false
    }

    private let epoll: Int32
    private let state = Mutex(State())

    private init?() {
        epoll = fem_epoll_create()
        if epoll < 0 { return nil }
    }

    deinit { close(epoll) }

    /// Watches `fd` until `handler` returns false (it is called each time `fd` is readable), or `unwatch`. With
    /// `closeOnRemove`, the reactor closes `fd` when the watch ends. Returns the watch's token, or nil (errno set)
    /// when epoll refused the descriptor.
    @discardableResult
    public func watch(_ fd: Int32, closeOnRemove: Bool = false, _ handler: @escaping @Sendable () -> Bool) -> UInt64? {
        let (token, start) = state.withLock { s -> (UInt64, Bool) in
            s.nextToken += 1
            s.registrations[s.nextToken] = Registration(fd: fd, closeOnRemove: closeOnRemove, handler: handler)
            defer { s.started = true }
            return (s.nextToken, !s.started)
        }
        if start {
            let thread = Thread { [self] in
                nameThread("fem-events")
                self.loop()
            }
            thread.name = "fem-events"
            thread.stackSize = 1 << 20
            thread.start()
        }
        if fem_epoll_add(epoll, fd, token) != 0 {
            let e = errno
            state.withLock { _ = $0.registrations.removeValue(forKey: token) }
            errno = e
            return nil
        }
        return token
    }

    /// Ends a watch (no handler call starts after it returns... except one already picked up by the reactor).
    public func unwatch(_ token: UInt64) {
        guard let r = state.withLock({ $0.registrations.removeValue(forKey: token) }) else { return }
        _ = fem_epoll_del(epoll, r.fd)
        if r.closeOnRemove { close(r.fd) }
    }

    /// Watches in force now (for tests and diagnostics).
    public var watchCount: Int { state.withLock { $0.registrations.count } }

    private func loop() {
        var tokens = [UInt64](repeating: 0, count: 64)
        while true {
            let n = tokens.withUnsafeMutableBufferPointer { fem_epoll_wait(epoll, $0.baseAddress, 64, -1) }
            if n < 0 {
                if errno == EINTR { continue }
                // EBADF/EINVAL cannot happen with a descriptor this object owns; do not spin if it does.
                Thread.sleep(forTimeInterval: 1)
                continue
            }
            for token in tokens.prefix(Int(n)) {
                guard let r = state.withLock({ $0.registrations[token] }) else { continue }
                if !r.handler() { unwatch(token) }
            }
        }
    }
}
