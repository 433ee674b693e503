import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Follows a growing file (a task's log) line by line, polling every `interval`: from its start until `finish` is
/// called, which wakes the reader at once to read what is left and end the stream. A file that does not exist yet is
/// waited for. Lines longer than `maxLine` are cut (the rest of such a line is dropped); empty lines are skipped.
public enum FileTail {
    public static func follow(_ path: String, interval: Duration = .milliseconds(100), maxLine: Int = 64 * 1024)
        -> (lines: AsyncStream<String>, finish: @Sendable () -> Void) {
        let (lines, continuation) = AsyncStream<String>.makeStream()
        let reader = Task.detached {
            var fd: Int32 = -1
            defer { if fd >= 0 { close(fd) } }
            var pending: [UInt8] = []
            var skipping = false
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let last = Task.isCancelled
                if fd < 0 { fd = open(path, O_RDONLY | O_CLOEXEC) }
                if fd >= 0 {
                    // Truncated under us (a re-attached container's logs are rewritten from the start).
                    var st = stat()
                    if fstat(fd, &st) == 0, st.st_size < lseek(fd, 0, SEEK_CUR) {
                        lseek(fd, 0, SEEK_SET)
                        pending.removeAll()
                    }
                    while true {
                        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                        if n <= 0 { break }
                        for byte in buffer[0..<n] {
                            // A carriage return ends a line too (progress output rewrites its line).
                            if byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                                if !skipping && !pending.isEmpty {
                                    continuation.yield(String(decoding: pending, as: UTF8.self))
                                }
                                pending.removeAll(keepingCapacity: true)
                                skipping = false
                            } else if pending.count < maxLine {
                                pending.append(byte)
                            } else if !skipping {
                                continuation.yield(String(decoding: pending, as: UTF8.self))
                                pending.removeAll(keepingCapacity: true)
                                skipping = true
                            }
                        }
                    }
                }
                if last { break }
                try? await Task.sleep(for: interval)  // a finish cancels the sleep: the last read comes at once
            }
            if !pending.isEmpty && !skipping { continuation.yield(String(decoding: pending, as: UTF8.self)) }
            continuation.finish()
        }
        continuation.onTermination = { _ in reader.cancel() }
        return (lines, { reader.cancel() })
    }
}
