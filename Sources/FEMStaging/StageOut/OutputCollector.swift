import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Relative paths of the regular files under `root`, never following symlinks.
    static func walk(_ root: String) -> [String] {
        var out: [String] = []
        func visit(_ rel: String) {
            let dir = rel.isEmpty ? root : "\(root)/\(rel)"
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() {
                let child = rel.isEmpty ? name : "\(rel)/\(name)"
                var st = stat()
                guard lstat("\(root)/\(child)", &st) == 0 else { continue }
                switch st.st_mode & S_IFMT {
                case S_IFDIR: visit(child)
                case S_IFREG: out.append(child)
                default: continue  // symlinks, devices, FIFOs, sockets
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
