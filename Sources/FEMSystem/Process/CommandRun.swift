import Foundation

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

extension ChildProcess {
    /// Runs `executable` (no shell: `arguments` are passed as they are) with exactly `environment`, stdin from
    /// /dev/null, and collects its output (through files in a private temporary folder, removed afterwards).
    /// The process is waited for off the cooperative pool. Output past `limit` bytes is cut.
    public static func run(executable: String, arguments: [String], environment: [String: String],
                           workingDirectory: String = "/", limit: Int = 8 << 20) async throws -> CommandResult {
        let dir = NSTemporaryDirectory() + "fem-cmd-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = "\(dir)/stdout", err = "\(dir)/stderr"
        let spawned = try spawn(executable: executable, arguments: arguments, environment: environment,
                                workingDirectory: workingDirectory, stdoutPath: out, stderrPath: err)
        let status = await exitStatus(of: spawned.pid)
        func read(_ path: String) -> String {
            guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
            defer { try? handle.close() }
            let data = (try? handle.read(upToCount: limit)) ?? nil
            return String(decoding: data ?? Data(), as: UTF8.self)
        }
        return CommandResult(status: status, stdout: read(out), stderr: read(err))
    }
}
