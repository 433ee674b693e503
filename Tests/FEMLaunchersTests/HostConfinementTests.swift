import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation
import Testing

/// Where host tasks cannot be confined, the launcher refuses unless the admin said otherwise.
struct HostConfinementTests {
    @Test func noCgroupMeansRefusalUnlessAllowed() {
        let none = CgroupHost.detect(mounts: "proc /proc proc rw 0 0\ntmpfs /sys/fs/cgroup tmpfs rw 0 0\n")
        #expect(none == nil)
        let strict = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none)
        let refusal = strict.refusal()
        #expect(refusal?.hasPrefix("launchers.process.allow_unconfined: this host has no usable cgroup") == true,
                "\(refusal ?? "nil")")
        #expect(refusal?.contains(CgroupHost.unavailable) == true)
        let allowed = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none,
                                            allowUnconfined: true)
        #expect(allowed.refusal() == nil)
    }

    @Test func aV1HostWithoutThePidsControllerIsNotEnough() {
        let memoryOnly = CgroupHost(version: .v1, roots: ["memory": "/sys/fs/cgroup/memory"])
        #expect(TaskCgroup.probe(host: memoryOnly, node: "n1")?.contains("pids controller is not mounted") == true)
    }
}
