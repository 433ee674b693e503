import FEMCore
import FEMSystem
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
                do {
                    try Posix.mkdir(current, mode: 0o750)
                } catch let e as SystemError where e.errno == EEXIST {
                    guard kind(current) == .directory else {  // something else was made there meanwhile
                        throw TaskFailure(.stageInFailure, "path \"\(relative)\": \(part) is not a folder")
                    }
                } catch {
                    throw TaskFailure(.stageInFailure, "cannot create a folder: \(error)")
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

    /// Symlinks under `root` whose target leaves `root`, as (path relative to root, target). Each link is resolved
    /// against the real file system, link by link: a link met on the way is read and followed from the folder it
    /// sits in, so `..` applies to where a link really leads (`a → .`, `b → a/..` leaves, however innocent each
    /// target looks on its own). A chain longer than `maxHops` counts as leaving.
    public static func escapingSymlinks(under root: String, maxHops: Int = 40) -> [(path: String, target: String)] {
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
                    if resolve(root: root, from: relative, target: target, maxHops: maxHops) == nil {
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

    /// Where `target`, read from a link in folder `from` (components under `root`), leads: its components under
    /// `root`, or nil when it leaves `root` (an absolute target, a `..` above the root, or more than `maxHops` links).
    /// Every folder on the stack is a real folder (never a link), so each `..` goes where the kernel's would.
    static func resolve(root: String, from: [String], target: String, maxHops: Int) -> [String]? {
        var stack = from
        var pending = ArraySlice(target.split(separator: "/", omittingEmptySubsequences: true).map(String.init))
        if target.hasPrefix("/") { return nil }
        var hops = 0
        while let part = pending.first {
            pending = pending.dropFirst()
            switch part {
            case ".":
                continue
            case "..":
                if stack.isEmpty { return nil }
                stack.removeLast()
            default:
                let path = ([root] + stack + [part]).joined(separator: "/")
                guard kind(path) == .symlink else {
                    stack.append(part)  // a folder, a file, or nothing yet: the rest is taken from there
                    continue
                }
                hops += 1
                guard hops <= maxHops, let next = try? FileManager.default.destinationOfSymbolicLink(atPath: path),
                      !next.hasPrefix("/") else { return nil }
                pending = ArraySlice(next.split(separator: "/", omittingEmptySubsequences: true).map(String.init)) + pending
            }
        }
        return stack
    }

    enum Kind { case missing, directory, symlink, other }

    /// What is at `path` itself (a symlink is not followed). A file that cannot be looked at (EACCES, ELOOP) counts
    /// as `other`: never walked into, never written through.
    static func kind(_ path: String) -> Kind {
        do {
            switch try Posix.lstatIfPresent(path)?.kind {
            case nil: return .missing
            case .directory?: return .directory
            case .symlink?: return .symlink
            default: return .other
            }
        } catch {
            return .other
        }
    }
}
