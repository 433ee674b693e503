import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Virtual environments for Python tools, under one folder, cached by tool id, version and a hash of the
/// requirements (and the interpreter and wheel folder they came from). Made once, under a lock, from PyPI or from a
/// folder of wheels; a half-made one (no `.fem-ready` marker) is made again.
struct PythonEnvironments: Sendable {
    let python: String
    let root: String
    let wheelDir: String?

    /// The environment's folder, made if needed. pip's output goes to `log`.
    func ensure(tool: String, version: String, requirements: [String], log: String) async throws -> String {
        let hasher = SHA256Digest()
        hasher.update(Array(([python, wheelDir ?? "pypi"] + requirements.sorted()).joined(separator: "\n").utf8))
        let dir = "\(root)/\(tool)-\(version)-\(hasher.finalizeHex().prefix(16))"
        if FileManager.default.fileExists(atPath: "\(dir)/.fem-ready") { return dir }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let lock = try FileLock(path: dir + ".lock")
        defer { lock.unlock() }
        if FileManager.default.fileExists(atPath: "\(dir)/.fem-ready") { return dir }
        try? FileManager.default.removeItem(atPath: dir)
        try Task.checkCancellation()
        try await run(python, ["-m", "venv", dir], log: log, what: "creating the Python environment")
        if !requirements.isEmpty {
            var args = ["install", "--disable-pip-version-check", "--no-input"]
            if let wheelDir { args += ["--no-index", "--find-links", wheelDir] }
            try await run("\(dir)/bin/pip", args + requirements, log: log,
                          what: "installing \(requirements.joined(separator: " "))")
        }
        _ = FileManager.default.createFile(atPath: "\(dir)/.fem-ready", contents: Data(requirements.joined(separator: "\n").utf8))
        return dir
    }

    private func run(_ executable: String, _ args: [String], log: String, what: String) async throws {
        let child: ChildProcess.Spawned
        do {
            child = try ChildProcess.spawn(executable: executable, arguments: args,
                                           environment: ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                                                         "HOME": root],
                                           workingDirectory: root, stdoutPath: log, stderrPath: log)
        } catch {
            throw TaskFailure(.stageInFailure, "\(what): cannot run \(executable): \(error)")
        }
        // A cancel of the task stops the installer's whole process group (its own, from spawn) at once.
        let status = await withTaskCancellationHandler {
            await ChildProcess.exitStatus(of: child.pid)
        } onCancel: {
            ChildProcess.signalGroup(child.pid, SIGKILL)
        }
        if Task.isCancelled { throw CancellationError() }
        guard status == .exited(0) else {
            let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").suffix(3)
                .joined(separator: " | ")
            throw TaskFailure(.stageInFailure, "\(what) failed (\(status)): \(tail)")
        }
    }
}
