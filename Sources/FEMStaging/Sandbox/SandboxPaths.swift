import FEMCore
import Foundation

/// Checks for paths built from message content: nothing a plan names may reach outside the task's sandbox,
/// neither through `..` or an absolute path, nor through a symlink (one already there, one a cloned repository
/// brings, or one on the way to a downloaded file).
public enum SandboxPaths {
    /// `root/relative`, after checking `relative` and creating its parent folders one by one. Refuses a component
    /// that is a symlink or not a folder.
    public static func prepareFile(root: String, relative: String) throws -> String {
        if let problem = RelativePath.problem(relative) { throw TaskFailure(.stageInFailure, "path \(problem)") }
        let parts = relative.split(separator: "/").map(String.init)
        var current = root
        for part in parts.dropLast() {
            current += "/\(part)"
            switch kind(current) {
            case .missing:
                guard mkdir(current, 0o750) == 0 || errno == EEXIST else {
                    throw TaskFailure(.stageInFailure, "cannot create \(current): \(String(cString: strerror(errno)))")
                }
            case .directory:
                continue
            case .symlink:
                throw TaskFailure(.stageInFailure, "path \"\(relative)\" passes through a symlink (\(part)); refused")
            case .other:
                throw TaskFailure(.stageInFailure, "path \"\(relative)\": \(part) is not a folder")
            }
        }
        let path = "\(root)/\(relative)"
        if kind(path) == .symlink {
            throw TaskFailure(.stageInFailure, "path \"\(relative)\" is a symlink; refused")
        }
        return path
    }

    /// Symlinks under `root` whose target leaves `root` (an absolute target, or one whose `..` climb above it),
    /// as (path relative to root, target).
    public static func escapingSymlinks(under root: String) -> [(path: String, target: String)] {
        var found: [(String, String)] = []
        func walk(_ relative: [String]) {
            let dir = ([root] + relative).joined(separator: "/")
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() {
                let entry = relative + [name]
                let path = "\(dir)/\(name)"
                switch kind(path) {
                case .directory:
                    walk(entry)
                case .symlink:
                    let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "/"
                    if !staysInside(from: relative, target: target) {
                        found.append((entry.joined(separator: "/"), target))
                    }
                default:
                    continue
                }
            }
        }
        walk([])
        return found
    }

    /// Whether `target`, read from a link in folder `from` (components under the root), stays under the root.
    static func staysInside(from: [String], target: String) -> Bool {
        if target.hasPrefix("/") { return false }
        var stack = from
        for part in target.split(separator: "/") {
            switch part {
            case ".": continue
            case "..":
                if stack.isEmpty { return false }
                stack.removeLast()
            default: stack.append(String(part))
            }
        }
        return true
    }

    enum Kind { case missing, directory, symlink, other }

    static func kind(_ path: String) -> Kind {
        var st = stat()
        guard lstat(path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFLNK: return .symlink
        default: return .other
        }
    }
}
