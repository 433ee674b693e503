import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking pipe that lets async code wake a thread sleeping in `poll()` beside a socket.
public final class WakeupPipe: Sendable {
    public let readDescriptor: Int32
    private let writeDescriptor: Int32

    public init() {
        var fds: [Int32] = [-1, -1]
        // A pipe is an environment resource; failing to get one means the process is out of descriptors.
        precondition(fem_pipe_cloexec_nonblock(&fds) == 0, "pipe2 failed: errno \(errno)")
        readDescriptor = fds[0]
        writeDescriptor = fds[1]
    }

    deinit {
        close(readDescriptor)
        close(writeDescriptor)
    }

    /// Safe from any thread; a full pipe already means "wake up", so EAGAIN is fine.
    public func wake() {
        var byte: UInt8 = 1
        _ = write(writeDescriptor, &byte, 1)
    }

    public func drain() {
        var buffer = [UInt8](repeating: 0, count: 256)
        while read(readDescriptor, &buffer, buffer.count) > 0 {}
    }

    public struct Readiness {
        public var socket: Bool
        public var wakeup: Bool
    }

    /// Waits until `socket` is readable, the pipe was woken, or the timeout passed. EINTR counts as a timeout.
    public func poll(socket: Int32, timeoutMilliseconds: Int) -> Readiness {
        var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: readDescriptor, events: Int16(POLLIN), revents: 0)]
        let n = Glibc.poll(&fds, 2, Int32(timeoutMilliseconds))
        if n <= 0 { return Readiness(socket: false, wakeup: false) }
        let socketReady = fds[0].revents & Int16(POLLIN | POLLERR | POLLHUP) != 0
        let wakeReady = fds[1].revents & Int16(POLLIN) != 0
        if wakeReady { drain() }
        return Readiness(socket: socketReady, wakeup: wakeReady)
    }
}
