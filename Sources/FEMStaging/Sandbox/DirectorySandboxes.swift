import FEMCore
import Foundation

/// Sandboxes as folders: `<work_dir>/sandboxes/<task_id>/{src,in,out,logs}`. Task ids are validated
/// (letters, digits, `.`, `_`, `-`; no leading dot), so a sandbox path can never leave the root.
public struct DirectorySandboxes: SandboxProvider {
    public let root: String

    public init(workDir: String) {
        root = "\(workDir)/sandboxes"
    }

    public func paths(taskID: String) -> ToolPaths {
        ToolPaths.under("\(root)/\(taskID)")
    }

    public func prepare(taskID: String) throws -> ToolPaths {
        let p = paths(taskID: taskID)
        for dir in [p.src, p.input, p.output, p.logs] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
        }
        return p
    }
}
