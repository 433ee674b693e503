import FEMCore
import FEMSystem
import Foundation

/// Who owns a host task's sandbox. While the task runs, everything in it except `logs/` belongs to the task user
/// (the sandbox folder itself stays the daemon's, 0711: the task can reach its folders but not replace them, so
/// the daemon's log files cannot be swapped for links). Afterwards what the task user owns is given back to the
/// daemon's user and every folder is 0700; a hard link the task made to someone else's file is removed.
///
/// Every change goes through a descriptor opened without following links (`NoFollowTree`: openat with O_NOFOLLOW,
/// then fchown and fchmod on what fstat described), so a process of the task user that swaps a folder for a link
/// while this runs (another task of the same user, or one that escaped where no cgroup is used) cannot turn a chown
/// or chmod onto a file outside the sandbox. Links, FIFOs, sockets and devices are left alone.
enum SandboxOwnership {
    static func give(_ paths: ToolPaths, to user: TaskUser) throws {
        do {
            try Posix.chmod(paths.sandbox, mode: 0o711)
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot open the sandbox \(paths.sandbox) to the task user: \(error)")
        }
        do {
            try Posix.chmod(paths.logs, mode: 0o700)
            let logs = (paths.logs as NSString).lastPathComponent
            try NoFollowTree.walk(below: paths.sandbox, skipping: [logs]) { entry in
                // A file with another name elsewhere is not the sandbox's to give away.
                if entry.status.kind == .regular && entry.status.links > 1 { return }
                try entry.changeOwner(uid: user.uid, gid: user.gid)
                if entry.status.kind == .directory { try entry.changeMode(0o700) }
            }
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot give \(paths.sandbox) to the task user \(user.name): \(error)")
        }
    }

    /// Gives the sandbox back to the daemon's user. Every entry is tried; the failures (which leave files the task
    /// user owns, or a hard link to another's file, in the sandbox) are returned, for the caller to log.
    @discardableResult
    static func takeBack(_ paths: ToolPaths, from user: TaskUser) -> [SystemError] {
        let uid = Posix.realUserID, gid = Posix.realGroupID
        let logs = (paths.logs as NSString).lastPathComponent
        var failures: [SystemError] = []
        func attempt(_ body: () throws -> Void) {
            do { try body() } catch let e as SystemError { failures.append(e) } catch {
                failures.append(SystemError(call: "\(error)", errno: EIO, path: paths.sandbox))
            }
        }
        attempt {
            try NoFollowTree.walk(below: paths.sandbox, skipping: [logs]) { entry in
                // A hard link the task made to a file it does not own (where protected_hardlinks is off) would let
                // stage-out, which reads as the daemon, publish that file: it is removed from the sandbox.
                if entry.status.kind == .regular && entry.status.links > 1 && entry.status.owner != user.uid {
                    attempt { try entry.removeName() }
                    return
                }
                guard entry.status.owner == user.uid else { return }
                attempt { try entry.changeOwner(uid: uid, gid: gid) }
                if entry.status.kind == .directory { attempt { try entry.changeMode(0o700) } }
            }
        }
        attempt { try Posix.chmod(paths.sandbox, mode: 0o700) }
        return failures
    }
}
