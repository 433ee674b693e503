import FEMCore
import FEMSystem
import Foundation

/// Virtual environments for Python tools, under one folder, cached by tool id, version and a hash of the
/// requirements (and the interpreter, wheel folder and install options they came from). Made once, under a lock,
/// from PyPI or from a folder of wheels; a half-made one (no `.fem-ready` marker) is made again.
/// pip installs only checked `name==version` pins (PythonRequirement) from a requirements file the node writes:
/// wheels only unless `allowSourceBuilds`, and `--require-hashes` when the pins carry hashes.
struct PythonEnvironments: Sendable {
    let python: String
    let root: String
    let wheelDir: String?
    var allowSourceBuilds = false
    /// Run venv and pip as this user (the flower task user), in a folder it owns while they run; the finished
    /// environment is then the daemon's, readable by all and writable by none but it, so a task cannot change what
    /// later tasks of the same tool run. nil: as the daemon (library callers, unit tests).
    var user: TaskUser? = nil

    /// The environment's folder, made if needed. pip's output goes to `log` (the task's log folder) and never into
    /// an event: a failure says only what failed and where the log is.
    func ensure(tool: String, version: String, requirements: [PythonRequirement], log: String) async throws -> String {
        let lines = requirements.map(\.line).sorted()
        let hasher = SHA256Digest()
        hasher.update(Array(([python, wheelDir ?? "pypi", allowSourceBuilds ? "source-builds" : "wheels-only"] + lines)
            .joined(separator: "\n").utf8))
        let dir = "\(root)/\(tool)-\(version)-\(hasher.finalizeHex().prefix(16))"
        if FileManager.default.fileExists(atPath: "\(dir)/.fem-ready") { return dir }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let lock = try FileLock(path: dir + ".lock")
        defer { lock.unlock() }
        if FileManager.default.fileExists(atPath: "\(dir)/.fem-ready") { return dir }
        try? FileManager.default.removeItem(atPath: dir)
        try Task.checkCancellation()
        if let user {
            do {
                try Posix.mkdir(dir, mode: 0o700)
                try Posix.chown(dir, uid: user.uid, gid: user.gid)
            } catch {
                throw TaskFailure(.stageInFailure, "cannot make the Python environment \(dir) for \(user.name): \(error)")
            }
        }
        try await run(python, ["-m", "venv", dir], log: log, what: "creating the Python environment")
        if !requirements.isEmpty {
            let file = "\(dir)/fem-requirements.txt"
            do {
                try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: file))
            } catch {
                throw TaskFailure(.stageInFailure, "cannot write the requirements file \(file): \(error)")
            }
            var args = ["install", "--disable-pip-version-check", "--no-input", "--isolated"]
            if !allowSourceBuilds { args += ["--only-binary", ":all:"] }
            if requirements.contains(where: { !$0.hashes.isEmpty }) { args.append("--require-hashes") }
            if let wheelDir { args += ["--no-index", "--find-links", wheelDir] }
            try await run("\(dir)/bin/pip", args + ["-r", file], log: log,
                          what: "installing \(requirements.map { "\($0.name)==\($0.version)" }.joined(separator: " "))")
        }
        if let user {
            do {
                try Self.takeBack(dir, from: user)
            } catch {
                throw TaskFailure(.stageInFailure, "cannot give the Python environment \(dir) to the daemon's user: \(error)")
            }
        }
        _ = FileManager.default.createFile(atPath: "\(dir)/.fem-ready", contents: Data(lines.joined(separator: "\n").utf8))
        return dir
    }

    /// The finished environment becomes the daemon's: what the task user made is given to the daemon's user,
    /// folders 0755, files readable (and executable where they were) by all, writable by the daemon only.
    /// A failure leaves an environment the task user could change: it is not marked ready.
    static func takeBack(_ dir: String, from user: TaskUser) throws {
        let uid = Posix.realUserID, gid = Posix.realGroupID
        try NoFollowTree.walk(from: dir) { entry in
            guard entry.status.owner == user.uid else { return }
            try entry.changeOwner(uid: uid, gid: gid)
            let owner = mode_t(entry.status.permissions & 0o700)
            let mode: mode_t = entry.status.kind == .directory
                ? 0o755 : owner | ((owner & 0o500) >> 3) | ((owner & 0o500) >> 6)
            try entry.changeMode(mode)
        }
    }

    private func run(_ executable: String, _ args: [String], log: String, what: String) async throws {
        let child: ChildProcess.Spawned
        do {
            // As the task user: no new privileges, no core files, the host network (pip fetches from an index).
            let confinement = user.map {
                ChildProcess.Confinement(uid: $0.uid, gid: $0.gid, openFiles: 4096, processes: 4096, newNetwork: false)
            }
            child = try ChildProcess.spawn(executable: executable, arguments: args,
                                           environment: ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                                                         "HOME": root],
                                           workingDirectory: root, stdoutPath: log, stderrPath: log,
                                           confinement: confinement)
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
            // Never pip's own words: they can quote any file it was pointed at.
            throw TaskFailure(.stageInFailure, "\(what) failed (\(status)); see the task's log "
                              + "(logs/\(URL(fileURLWithPath: log).lastPathComponent))")
        }
    }
}
