import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation
import Testing

/// Where host tasks cannot be confined, the launcher refuses unless the admin said otherwise.
struct HostConfinementTests {
    @Test func noCgroupMeansRefusalUnlessAllowed() {
        let none = CgroupSupport.detect(mounts: "proc /proc proc rw 0 0\ntmpfs /sys/fs/cgroup tmpfs rw 0 0\n")
        guard case .unavailable(let why) = none else { Issue.record("expected unavailable, got \(none)"); return }
        #expect(why.contains("no cgroup v1 memory or pids hierarchy is mounted"), "\(why)")
        let strict = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none)
        let refusal = strict.refusal()
        #expect(refusal?.hasPrefix("launchers.process.allow_unconfined: this host has no usable cgroup") == true,
                "\(refusal ?? "nil")")
        let allowed = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none,
                                            allowUnconfined: true)
        #expect(allowed.refusal() == nil)
    }

    @Test func v1HierarchiesAreFoundInTheMountTable() {
        let table = """
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0
            cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0
            cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
            """
        let found = CgroupSupport.detect(mounts: table)
        #expect(found == .v1(mounts: ["memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
                                      "cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"]))
    }
}
