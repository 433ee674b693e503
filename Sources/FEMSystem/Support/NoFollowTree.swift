import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A walk over a folder's tree through descriptors that never follow links: each entry is opened with `openat`
/// and O_NOFOLLOW relative to its parent folder's descriptor, and described by `fstat` of that descriptor, so a
/// process that swaps a folder for a link while the walk runs cannot turn a change onto a file outside the tree.
/// Only folders and regular files are visited; links, FIFOs, sockets and devices are left alone.
public enum NoFollowTree {
    /// One visited folder or regular file, open while the visit runs.
    public struct Entry {
        public let fd: Int32
        public let status: FileStatus
        /// The folder the entry is in (open), and its name there.
        public let parent: Int32
        public let name: String
        /// For messages only; never used to open anything.
        public let path: String

        public func changeOwner(uid: UInt32, gid: UInt32) throws {
            try Posix.fchown(fd, uid: uid, gid: gid, path: path)
        }

        public func changeMode(_ mode: mode_t) throws {
            try Posix.fchmod(fd, mode: mode, path: path)
        }

        /// Removes this name of a regular file from its folder.
        public func removeName() throws {
            try Posix.unlinkat(parent, name, path: (path as NSString).deletingLastPathComponent)
        }
    }

    public typealias Visit = (Entry) throws -> Void

    /// Visits every folder and regular file below `root` (not `root` itself), except the top-level `skipping` names.
    /// A `root` that is missing or a link is not walked (nothing is visited).
    public static func walk(below root: String, skipping: Set<String> = [], _ visit: Visit) throws {
        let fd: Int32
        do {
            fd = try Posix.open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        } catch let e as SystemError where [ENOENT, ELOOP, ENOTDIR].contains(e.errno) {
            return
        }
        try entries(of: fd, path: root, skipping: skipping, visit)
    }

    /// Visits `root` itself (a folder, not a link) and everything below it.
    public static func walk(from root: String, _ visit: Visit) throws {
        let parentPath = (root as NSString).deletingLastPathComponent
        let name = (root as NSString).lastPathComponent
        let parent = try Posix.open(parentPath.isEmpty ? "." : parentPath, O_RDONLY | O_DIRECTORY)
        defer { Posix.release(parent) }
        try visitEntry(parent: parent, parentPath: parentPath, name: name, visit)
    }

    /// Takes ownership of `fd` (a folder): closes it when done.
    private static func entries(of fd: Int32, path: String, skipping: Set<String>, _ visit: Visit) throws {
        defer { Posix.release(fd) }
        let names = try Posix.names(inDirectory: fd, path: path).filter { !skipping.contains($0) }
        for name in names { try visitEntry(parent: fd, parentPath: path, name: name, visit) }
    }

    private static func visitEntry(parent: Int32, parentPath: String, name: String, _ visit: Visit) throws {
        let path = "\(parentPath)/\(name)"
        let fd: Int32
        do {
            fd = try Posix.openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, path: parentPath)
        } catch let e as SystemError where [ELOOP, ENOENT, ENXIO, EOPNOTSUPP].contains(e.errno) {
            return  // a link (ELOOP), a socket (ENXIO), or gone
        }
        let status: FileStatus
        do {
            status = try Posix.fstat(fd, path: path)
        } catch {
            Posix.release(fd)
            throw error
        }
        guard status.kind == .directory || status.kind == .regular else {
            Posix.release(fd)
            return
        }
        do {
            try visit(Entry(fd: fd, status: status, parent: parent, name: name, path: path))
        } catch {
            Posix.release(fd)
            throw error
        }
        if status.kind == .directory {
            try entries(of: fd, path: path, skipping: [], visit)
        } else {
            Posix.release(fd)
        }
    }
}
