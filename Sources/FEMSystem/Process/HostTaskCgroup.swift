#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// What host tasks (launchers `process` and `flower`) need of a task's cgroup beyond what TaskCgroup offers: the
/// files their process writes itself into before exec, a polite signal to every member, and a check that this
/// host can make one at all (for `fem-client check` and the launchers' refusal to start without one).
extension TaskCgroup {
    /// `cgroup.procs` of the task's folder in every hierarchy the node uses (one on v2).
    public var procsFiles: [String] { host.directories(path).map { "\($0)/cgroup.procs" } }

    /// Sends `signal` to every process in the cgroup once (a TERM before `killAll`).
    public func signalAll(_ signal: Int32) {
        for pid in processes() where pid > 1 { kill(pid, signal) }
    }

    /// The cgroup path of a host task: `/fem-client/<node>/<task>`.
    public static func hostTaskPath(node: String, task: String) throws -> String {
        try relativePath(root: "fem-client", node: node, task: task)
    }

    /// Makes and removes a scratch cgroup for `node` with every limit host tasks get: nil when that works, else why
    /// not. Host tasks also need the pids controller, which a memory-only v1 host lacks.
    public static func probe(host: CgroupHost?, node: String) -> String? {
        guard let host else { return CgroupHost.unavailable }
        if host.version == .v1 && host.roots["pids"] == nil {
            return "the cgroup v1 pids controller is not mounted (a task's processes could not be limited)"
        }
        do {
            let cg = try create(host: host, path: try hostTaskPath(node: node, task: "probe-\(getpid())"),
                                limits: CgroupLimits(memoryBytes: 64 << 20, pids: 16, cpus: 1))
            if host.version == .v2 {
                let dir = host.directories(cg.path).first ?? ""
                for file in ["memory.max", "pids.max", "cgroup.procs"] where access("\(dir)/\(file)", W_OK) != 0 {
                    cg.remove()
                    return "\(dir)/\(file) is not writable (the memory and pids controllers are not delegated here)"
                }
            }
            cg.remove()
            return nil
        } catch {
            return "\(error)"
        }
    }
}

extension CgroupHost {
    /// Why `detect()` found nothing, for messages.
    public static let unavailable = "neither a cgroup v2 hierarchy with the memory controller nor a cgroup v1 memory "
        + "hierarchy is mounted"
}
