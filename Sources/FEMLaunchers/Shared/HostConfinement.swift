import FEMCore
import FEMSystem
import Foundation

/// The unprivileged account host tasks run as (`launchers.process.user`, `launchers.flower.user`).
public struct TaskUser: Sendable, Equatable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32

    public init(name: String, uid: UInt32, gid: UInt32) {
        self.name = name
        self.uid = uid
        self.gid = gid
    }

    /// A user name (or a numeric uid) from the password database; nil when there is no such user.
    public static func lookup(_ name: String) -> TaskUser? {
        if let account = Posix.account(named: name) {
            return TaskUser(name: name, uid: account.uid, gid: account.gid)
        }
        if let uid = UInt32(name) {
            return TaskUser(name: name, uid: uid, gid: Posix.account(uid: uid)?.gid ?? uid)
        }
        return nil
    }
}

/// How a host launcher confines its processes (see HostProcesses): the task user, a cgroup per task with limits
/// from the plan's `resources` capped by these node limits, and the plan's `network`.
public struct HostConfinementConfig: Sendable {
    /// The launcher's config section, for messages (`launchers.process`).
    public var section: String
    /// False only for library callers and unit tests: processes start as today (the daemon's user, no cgroup).
    /// The daemon always builds a confined config from the node configuration.
    public var confined: Bool
    /// nil: the daemon's own user (never from the node configuration, which refuses root).
    public var user: TaskUser?
    public var nodeID: String
    /// Where task cgroups are made; nil: none is usable, tasks run without one (only with `allowUnconfined`).
    public var cgroups: CgroupHost?
    public var allowUnconfined: Bool
    public var defaultMemoryMB: Int
    public var maxMemoryMB: Int
    public var maxCPUs: Int
    public var pidsLimit: Int
    public var openFiles: Int
    public var allowHostNetwork: Bool
    /// The launcher's processes always use the host network. Flower: the SuperNode must reach its SuperLink, a
    /// remote gRPC endpoint. A namespace of its own would need, per task, a veth pair with routes and NAT or a
    /// user-space network stack (slirp4netns, pasta) forwarding just that address: more moving parts than this
    /// launcher has, so Flower tasks keep the host's network (still as the task user, in their cgroup). What a
    /// SuperNode may connect to is then only as narrow as the node's SuperLink allowlist and the host firewall.
    public var alwaysHostNetwork: Bool

    public init(section: String, confined: Bool = true, user: TaskUser?, nodeID: String, cgroups: CgroupHost?,
                allowUnconfined: Bool = false, defaultMemoryMB: Int = 512, maxMemoryMB: Int = 8192, maxCPUs: Int = 2,
                pidsLimit: Int = 256, openFiles: Int = 1024, allowHostNetwork: Bool = false,
                alwaysHostNetwork: Bool = false) {
        self.section = section
        self.confined = confined
        self.user = user
        self.nodeID = nodeID
        self.cgroups = cgroups
        self.allowUnconfined = allowUnconfined
        self.defaultMemoryMB = defaultMemoryMB
        self.maxMemoryMB = maxMemoryMB
        self.maxCPUs = maxCPUs
        self.pidsLimit = pidsLimit
        self.openFiles = openFiles
        self.allowHostNetwork = allowHostNetwork
        self.alwaysHostNetwork = alwaysHostNetwork
    }

    /// Today's behaviour (the daemon's user, no cgroup, the host network): for unit tests and library callers.
    public static func unconfined(section: String) -> HostConfinementConfig {
        HostConfinementConfig(section: section, confined: false, user: nil, nodeID: "", cgroups: nil,
                              allowUnconfined: true, allowHostNetwork: true, alwaysHostNetwork: true)
    }

    /// Why host processes cannot start on this node (no usable cgroup and no explicit `allow_unconfined`), or nil.
    public func refusal() -> String? {
        guard confined else { return nil }
        if Posix.effectiveUserID != 0 {
            return "\(section).user: the daemon runs as uid \(Posix.effectiveUserID), not root, so it cannot start host tasks as "
                + "\(user?.name ?? "the task user") (nor give them a cgroup and a network namespace); run the daemon as "
                + "root, or do not enable this launcher"
        }
        guard !allowUnconfined else { return nil }
        if let why = TaskCgroup.probe(host: cgroups, node: nodeID) {
            return "\(section).allow_unconfined: this host has no usable cgroup for host tasks (\(why)); without "
                + "one their memory, CPU and processes cannot be limited or all ended. Fix the cgroup mounts, or set "
                + "\(section).allow_unconfined = true to run them anyway"
        }
        return nil
    }

    /// Why the task user cannot reach `dir` (a folder on the way that others may not search), or nil. Host tasks
    /// reach their sandbox, `<work_dir>/sandboxes/<task>`, by its absolute path.
    public func unreachable(_ dir: String) -> String? {
        guard confined, let user = user else { return nil }
        let absolute = dir.hasPrefix("/") ? dir : FileManager.default.currentDirectoryPath + "/" + dir
        var path = ""
        for part in absolute.split(separator: "/") {
            path += "/\(part)"
            let st: FileStatus
            do {
                guard let found = try Posix.statIfPresent(path) else { return nil }  // made later by the daemon (0711)
                st = found
            } catch {
                return "\(section).user: cannot tell whether the task user \(user.name) can reach \(dir): \(error)"
            }
            let bit: UInt32 = st.owner == user.uid ? 0o100 : st.group == user.gid ? 0o010 : 0o001
            if st.permissions & bit == 0 {
                return "\(section).user: the task user \(user.name) cannot reach \(dir): \(path) is mode "
                    + String(st.permissions, radix: 8) + " (host tasks need to pass through it: chmod o+x "
                    + "\(path), or choose a node.work_dir under a folder others may pass)"
            }
        }
        return nil
    }

    /// The plan's `network` against the node's: nil when allowed, else the reason to decline.
    public func networkRefusal(_ plan: ToolPlan) -> String? {
        if confined && !alwaysHostNetwork && plan.network == .host && !allowHostNetwork {
            return "the plan asks for the host network, which this node does not allow for host processes "
                + "(\(section).allow_host_network)"
        }
        return nil
    }

    func limits(_ plan: ToolPlan) -> CgroupLimits {
        let memoryMB = min(plan.resources.memoryMB ?? defaultMemoryMB, maxMemoryMB)
        let cpus = min(plan.resources.cpus ?? 1, Double(maxCPUs))
        return CgroupLimits(memoryBytes: memoryMB << 20, pids: pidsLimit, cpus: cpus)
    }
}
