import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a short-lived command printed and how it ended (a scheduler's client: `sbatch`, `squeue`, `scancel`).
public struct CommandResult: Sendable, Equatable {
    public var status: ExitStatus
    public var stdout: String
    public var stderr: String

    public var succeeded: Bool { status == .exited(0) }
    /// stderr, else stdout, trimmed: what a failure message quotes.
    public var diagnostic: String {
        let e = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        return e.isEmpty ? stdout.trimmingCharacters(in: .whitespacesAndNewlines) : e
    }
}

/// A command that did not end within its deadline (it was killed).
public struct CommandTimedOut: Error, CustomStringConvertible, Sendable {
    public var executable: String
    public var deadline: Duration
    public var description: String {
        "\(executable) did not end within \(deadline.components.seconds) s and was killed"
    }
}

extension ChildProcess {
    /// Runs `executable` (no shell: `arguments` are passed as they are) with exactly `environment`, stdin from
    /// /dev/null, and collects its output (through files in a private temporary folder, removed afterwards).
    /// The process is waited for off the cooperative pool (the reactor reaps it). Output past `limit` bytes is cut.
    /// A command still running after `deadline`, or when the calling task is cancelled, is ended (SIGTERM, then
    /// SIGKILL two seconds later) and `run` throws (`CommandTimedOut`, or `CancellationError`): a hung client (an
    /// unreachable server) never holds its caller.
    public static func run(executable: String, arguments: [String], environment: [String: String],
                           workingDirectory: String = "/", limit: Int = 8 << 20,
                           deadline: Duration = .seconds(3600)) async throws -> CommandResult {
        let dir = NSTemporaryDirectory() + "fem-cmd-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = "\(dir)/stdout", err = "\(dir)/stderr"
        let spawned = try spawn(executable: executable, arguments: arguments, environment: environment,
                                workingDirectory: workingDirectory, stdoutPath: out, stderrPath: err)
        let exit = watchExit(spawned.pid)
        guard let status = await exit.wait(upTo: deadline) else {
            let cancelled = Task.isCancelled
            // Ended in an unstructured task: the caller's cancellation must not cut the TERM-to-KILL grace short.
            await Task {
                kill(spawned.pid, SIGTERM)
                if await exit.wait(upTo: .seconds(2)) == nil {
                    kill(spawned.pid, SIGKILL)
                    _ = await exit.wait()
                }
            }.value
            if cancelled { throw CancellationError() }
            throw CommandTimedOut(executable: executable, deadline: deadline)
        }
        func read(_ path: String) -> String {
            guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
            defer { try? handle.close() }
            let data = (try? handle.read(upToCount: limit)) ?? nil
            return String(decoding: data ?? Data(), as: UTF8.self)
        }
        return CommandResult(status: status, stdout: read(out), stderr: read(err))
    }
}
