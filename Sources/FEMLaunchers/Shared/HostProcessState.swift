import FEMCore

/// What a host-process launcher (`process`, `flower`) journals about the work it started: enough to find it again
/// after a restart and to tell it from a process that reused its PID.
public struct HostProcessState: LauncherState {
    public static let version = 2

    /// The main process, leader of its own process group.
    public var pid: Int32
    public var pgid: Int32
    /// The kernel's start time of `pid` (clock ticks since boot, `/proc/<pid>/stat`): a PID reused by another
    /// process after a restart does not match it.
    public var startTime: UInt64
    /// The task's cgroup, `<path> (<v1|v2>)`, when the work runs in one.
    public var cgroup: String?

    public init(pid: Int32, pgid: Int32, startTime: UInt64, cgroup: String?) {
        self.pid = pid
        self.pgid = pgid
        self.startTime = startTime
        self.cgroup = cgroup
    }

    /// A handle of a daemon before typed state: `pid`, `pgid`, `start_time` (and `cgroup`) as strings.
    public init?(legacy data: [String: String]) {
        guard let pid = data["pid"].flatMap({ Int32($0) }), let pgid = data["pgid"].flatMap({ Int32($0) }) else {
            return nil
        }
        self.init(pid: pid, pgid: pgid, startTime: data["start_time"].flatMap { UInt64($0) } ?? 0,
                  cgroup: data["cgroup"])
    }
}
