import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Who owns a host task's sandbox. While the task runs, everything in it except `logs/` belongs to the task user
/// (the sandbox folder itself stays the daemon's, 0711: the task can reach its folders but not replace them, so
/// the daemon's log files cannot be swapped for links). Afterwards what the task user owns is given back to the
/// daemon's user and every folder is 0700; a hard link the task made to someone else's file is removed.
///
/// Every change goes through a descriptor opened without following links (openat with O_NOFOLLOW, then fchown and
/// fchmod on what fstat described), so a process of the task user that swaps a folder for a link while this runs
/// (another task of the same user, or one that escaped where no cgroup is used) cannot turn a chown or chmod onto a
/// file outside the sandbox. Links, FIFOs, sockets and devices are left alone.
enum SandboxOwnership {
    static func give(_ paths: ToolPaths, to user: TaskUser) throws {
        guard chmod(paths.sandbox, 0o711) == 0 else {
            throw SystemError("chmod", errno: errno, "cannot open the sandbox \(paths.sandbox) to the task user")
        }
        chmod(paths.logs, 0o700)
        let logs = (paths.logs as NSString).lastPathComponent
        try OwnedTree.walk(below: paths.sandbox, skipping: [logs]) { fd, st, _, _ in
            // A file with another name elsewhere is not the sandbox's to give away.
            if (st.st_mode & S_IFMT) == S_IFREG && st.st_nlink > 1 { return }
            if fchown(fd, user.uid, user.gid) != 0 {
                throw SystemError("fchown", errno: errno, "cannot give \(paths.sandbox) to the task user \(user.name)")
            }
            if (st.st_mode & S_IFMT) == S_IFDIR { fchmod(fd, 0o700) }
        }
    }

    static func takeBack(_ paths: ToolPaths, from user: TaskUser) {
        let uid = getuid(), gid = getgid()
        let logs = (paths.logs as NSString).lastPathComponent
        try? OwnedTree.walk(below: paths.sandbox, skipping: [logs]) { fd, st, parent, name in
            // A hard link the task made to a file it does not own (where protected_hardlinks is off) would let
            // stage-out, which reads as the daemon, publish that file: it is removed from the sandbox.
            if (st.st_mode & S_IFMT) == S_IFREG && st.st_nlink > 1 && st.st_uid != user.uid {
                unlinkat(parent, name, 0)
                return
            }
            guard st.st_uid == user.uid else { return }
            fchown(fd, uid, gid)
            if (st.st_mode & S_IFMT) == S_IFDIR { fchmod(fd, 0o700) }
        }
        chmod(paths.sandbox, 0o700)
    }
}

/// A walk over a folder's tree through descriptors that never follow links.
enum OwnedTree {
    typealias Visit = (_ fd: Int32, _ st: stat, _ parent: Int32, _ name: String) throws -> Void

    /// Visits every folder and regular file below `root` (not `root` itself), except the top-level `skipping` names.
    static func walk(below root: String, skipping: Set<String> = [], _ visit: Visit) throws {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        try entries(of: fd, skipping: skipping, visit)
    }

    /// Visits `root` itself (a folder, not a link) and everything below it.
    static func walk(from root: String, _ visit: Visit) throws {
        let parentPath = (root as NSString).deletingLastPathComponent
        let name = (root as NSString).lastPathComponent
        let parent = open(parentPath.isEmpty ? "." : parentPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard parent >= 0 else { return }
        defer { close(parent) }
        try visitEntry(parent: parent, name: name, visit)
    }

    /// Takes ownership of `fd` (a folder): closes it when done.
    private static func entries(of fd: Int32, skipping: Set<String>, _ visit: Visit) throws {
        guard let dir = fdopendir(fd) else {
            close(fd)
            return
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." && !skipping.contains(name) { names.append(name) }
        }
        let parent = dirfd(dir)
        for name in names { try visitEntry(parent: parent, name: name, visit) }
    }

    private static func visitEntry(parent: Int32, name: String, _ visit: Visit) throws {
        let fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { return }  // a link (ELOOP), a socket, or gone
        var st = stat()
        let kind = fstat(fd, &st) == 0 ? st.st_mode & S_IFMT : 0
        guard kind == S_IFDIR || kind == S_IFREG else {
            close(fd)
            return
        }
        do {
            try visit(fd, st, parent, name)
        } catch {
            close(fd)
            throw error
        }
        if kind == S_IFDIR {
            try entries(of: fd, skipping: [], visit)
        } else {
            close(fd)
        }
    }
}
