import FEMCore
import FEMSystem
import Foundation

/// One file that leaves the node.
public struct CollectedFile: Sendable, Equatable, Encodable {
    /// Path on the host (not part of the manifest).
    public var source: String
    /// Path in the upload: `logs/stdout.log`, `out/result.csv`, `manifest.json`.
    public var path: String
    public var size: Int64
    public var sha256: String

    enum CodingKeys: String, CodingKey { case path, size, sha256 }
    public init(source: String, path: String, size: Int64, sha256: String) {
        self.source = source
        self.path = path
        self.size = size
        self.sha256 = sha256
    }
}

/// Limits from the node config.
public struct OutputLimits: Sendable {
    public var maxFileBytes: Int64
    public var maxTaskBytes: Int64

    public init(maxFileBytes: Int64 = 1 << 30, maxTaskBytes: Int64 = 4 << 30) {
        self.maxFileBytes = maxFileBytes
        self.maxTaskBytes = maxTaskBytes
    }
}

/// Picks what may leave the node: the task's logs, and regular files under `out/` matching the plan's output
/// patterns. Symlinks, devices, FIFOs and sockets are never collected; nothing outside `out/` and `logs/` is.
public enum OutputCollector {
    public static func collect(plan: ToolPlan, sandbox: ToolPaths, limits: OutputLimits) throws -> [CollectedFile] {
        var files: [CollectedFile] = []
        for name in ["stdout.log", "stderr.log"] {
            let p = "\(sandbox.logs)/\(name)"
            if isRegularFile(p) { files.append(try describe(p, as: "logs/\(name)")) }
        }
        var total: Int64 = 0
        for rel in walk(sandbox.output) {
            guard let rule = plan.outputs.first(where: { Glob.matches($0.pattern, rel) }) else { continue }
            let file = try describe("\(sandbox.output)/\(rel)", as: "out/\(rel)")
            let cap = min(rule.maxBytes ?? limits.maxFileBytes, limits.maxFileBytes)
            if file.size > cap {
                throw TaskFailure(.stageOutFailure, "output out/\(rel) is \(file.size) bytes, over the limit of \(cap) bytes")
            }
            total += file.size
            if total > limits.maxTaskBytes {
                throw TaskFailure(.stageOutFailure, "outputs exceed the task limit of \(limits.maxTaskBytes) bytes at "
                                 + "out/\(rel)")
            }
            files.append(file)
        }
        return files
    }

    static func isRegularFile(_ path: String) -> Bool {
        (try? Posix.lstatIfPresent(path))??.kind == .regular  // unreadable: not collected
    }

    /// Relative paths of the regular files under `root`, never following symlinks.
    static func walk(_ root: String) -> [String] {
        var out: [String] = []
        func visit(_ rel: String) {
            let dir = rel.isEmpty ? root : "\(root)/\(rel)"
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() {
                let child = rel.isEmpty ? name : "\(rel)/\(name)"
                guard let st = try? Posix.lstat("\(root)/\(child)") else { continue }  // gone meanwhile
                switch st.kind {
                case .directory: visit(child)
                case .regular: out.append(child)
                case .symlink, .other: continue  // symlinks, devices, FIFOs, sockets
                }
            }
        }
        visit("")
        return out
    }

    public static func describe(_ path: String, as name: String) throws -> CollectedFile {
        do {
            let (size, sha) = try SHA256Digest.file(path)
            return CollectedFile(source: path, path: name, size: size, sha256: sha)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot read \(name): \(error)")
        }
    }
}

/// The airlock's copy of a task's outputs: at collection the logs and the matching files of `out/` are copied into
/// `<work_dir>/staging/<task_id>/` (mode 0700, outside every sandbox: no container binds it and the tool cannot
/// write it), hashed while they are copied. The manifest of that copy is journaled; what is delivered later — after
/// an approval that may come days later — is read from the copy and checked against that manifest, never from
/// `out/` again.
public enum StagingCopy {
    /// Copies what `collect` would pick into `folder` (emptied first) and describes the copies. Every entry is
    /// opened relative to its parent folder's descriptor without following symlinks; a matching entry that is a hard
    /// link (more than one name) fails the collection, as does one that changes type while it is read. Symlinks,
    /// devices, FIFOs and sockets are never collected.
    public static func stage(plan: ToolPlan, sandbox: ToolPaths, limits: OutputLimits, into folder: String) throws
        -> (files: [CollectedFile], skipped: Int) {
        try prepareFolder(folder)
        var skipped = 0
        var files: [CollectedFile] = []
        if let logs = try? DirectoryHandle(root: sandbox.logs, followingSymlink: false) {
            for name in ["stdout.log", "stderr.log"] where try kind(logs, name, "logs/\(name)") == .regular {
                files.append(try copy(logs, name, as: "logs/\(name)", into: folder, cap: Int64.max))
            }
        }
        let out: DirectoryHandle
        do {
            out = try DirectoryHandle(root: sandbox.output, followingSymlink: false)
        } catch {
            return (files, 0)
        }
        var total: Int64 = 0
        func visit(_ dir: DirectoryHandle, _ rel: String) throws {
            let names: [String]
            do {
                names = try dir.names()
            } catch {
                throw TaskFailure(.stageOutFailure, "cannot list out/\(rel): \(error)")
            }
            for name in names {
                let child = rel.isEmpty ? name : "\(rel)/\(name)"
                switch try kind(dir, name, "out/\(child)") {
                case .directory?:
                    guard let sub = try? dir.subdirectory(name, create: false) else { continue }
                    try visit(sub, child)
                case .regular?:
                    guard let rule = plan.outputs.first(where: { Glob.matches($0.pattern, child) }) else { continue }
                    let cap = min(rule.maxBytes ?? limits.maxFileBytes, limits.maxFileBytes)
                    let file = try copy(dir, name, as: "out/\(child)", into: folder, cap: cap)
                    total += file.size
                    if total > limits.maxTaskBytes {
                        throw TaskFailure(.stageOutFailure, "outputs exceed the task limit of \(limits.maxTaskBytes) "
                                          + "bytes at out/\(child)")
                    }
                    files.append(file)
                case nil:
                    continue  // gone meanwhile
                case .symlink?, .other?:
                    // Symlinks, devices, FIFOs, sockets: never collected (counted, for the steward's information).
                    if plan.outputs.contains(where: { Glob.matches($0.pattern, child) }) { skipped += 1 }
                }
            }
        }
        try visit(out, "")
        return (files, skipped)
    }

    /// What `name` in `dir` is (nil: gone); a failure to look names the output.
    static func kind(_ dir: DirectoryHandle, _ name: String, _ rel: String) throws -> FileStatus.Kind? {
        do {
            return try dir.status(of: name)?.kind
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot look at \(rel): \(error)")
        }
    }

    /// Re-reads a staged file and compares it with what was approved; throws naming the file when it differs.
    public static func verify(_ file: CollectedFile) throws {
        let fd: Int32
        do {
            fd = try Posix.openForReading(file.source)
        } catch {
            throw TaskFailure(.stageOutFailure, "\(file.path): the staged copy cannot be read (\(error)); "
                              + "nothing more was sent")
        }
        defer { Posix.release(fd) }
        let (size, sha) = try hash(fd, what: file.path)
        guard size == file.size, sha == file.sha256 else {
            throw TaskFailure(.stageOutFailure, "\(file.path) changed after it was held: its staged copy is \(size) "
                              + "bytes with sha256 \(sha), the approved manifest says \(file.size) bytes with sha256 "
                              + "\(file.sha256); nothing more was sent")
        }
    }

    static func hash(_ fd: Int32, what: String) throws -> (Int64, String) {
        do {
            return try SHA256Digest.descriptor(fd)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot read \(what): \(error)")
        }
    }

    /// `folder` exists, empty, mode 0700, owned by the daemon, and so do its parents up to `staging/`.
    static func prepareFolder(_ folder: String) throws {
        let fm = FileManager.default
        let parent = (folder as NSString).deletingLastPathComponent
        do {
            try fm.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                   attributes: [.posixPermissions: 0o700])
            try Posix.chmod(parent, mode: 0o700)
            if try Posix.lstatIfPresent(folder) != nil { try fm.removeItem(atPath: folder) }
            try Posix.mkdir(folder, mode: 0o700)
        } catch let e as TaskFailure {
            throw e
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot prepare the staging folder \(folder): \(error)")
        }
    }

    /// Copies `name` (in `dir`) to `<folder>/<as>`, hashing the bytes as they are copied.
    static func copy(_ dir: DirectoryHandle, _ name: String, as rel: String, into folder: String, cap: Int64) throws
        -> CollectedFile {
        let fd: Int32
        do {
            fd = try dir.openForReading(name)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot open \(rel) to collect it: \(error)")
        }
        defer { Posix.release(fd) }
        guard let st = try? Posix.fstat(fd, path: rel), st.kind == .regular else {
            throw TaskFailure(.stageOutFailure, "\(rel) is no longer a regular file: it is not collected")
        }
        guard st.links == 1 else {
            throw TaskFailure(.stageOutFailure, "\(rel) has \(st.links) names (a hard link): outputs must be files "
                              + "of their own, so it is refused")
        }
        if st.size > cap {
            throw TaskFailure(.stageOutFailure, "output \(rel) is \(st.size) bytes, over the limit of \(cap) bytes")
        }
        let dest = "\(folder)/\(rel)"
        let destDir = (dest as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: destDir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot make \(destDir): \(error)")
        }
        let outFD: Int32
        do {
            outFD = try Posix.open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot create the staged copy: \(error)")
        }
        var closed = false
        defer { if !closed { Posix.release(outFD) } }  // a failure is already being thrown
        // Hashed while copied, from the same reads: the manifest describes exactly the bytes of the staged copy.
        var copied: Int64 = 0
        let copy: (size: Int64, sha256: String)
        do {
            copy = try SHA256Digest.descriptor(fd) { block in
                copied += Int64(block.count)
                if copied > cap {
                    throw TaskFailure(.stageOutFailure, "output \(rel) grew over the limit of \(cap) bytes while it was copied")
                }
                try FileWriter.writeAll(outFD, block, context: dest)
            }
        } catch let failure as TaskFailure {
            throw failure
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot copy \(rel) to \(dest): \(error)")
        }
        do {
            try Posix.fsync(outFD, path: dest)
            closed = true
            try Posix.close(outFD, path: dest)
        } catch {
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .stageOutFailure,
                              "cannot write the staged copy: \(error)")
        }
        return CollectedFile(source: dest, path: rel, size: copy.size, sha256: copy.sha256)
    }
}
