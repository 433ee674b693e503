@testable import FEMNode
import FEMCore
import Foundation
import Testing

struct NodeFingerprintTests {
    @Test func osReleaseIDAndVersion() {
        let ubuntu = """
            PRETTY_NAME="Ubuntu 24.04.1 LTS"
            NAME="Ubuntu"
            VERSION_ID="24.04"
            VERSION="24.04.1 LTS (Noble Numbat)"
            ID=ubuntu
            ID_LIKE=debian
            """
        let u = NodeFingerprint.osRelease(ubuntu)
        #expect(u.id == "ubuntu" && u.versionID == "24.04")
        let rocky = "# comment\nID='Rocky'\nVERSION_ID=\"9.4\"\nVARIANT_ID=x\n"
        #expect(NodeFingerprint.osRelease(rocky).id == "rocky" && NodeFingerprint.osRelease(rocky).versionID == "9.4")
        let arch = "NAME=\"Arch Linux\"\nID=arch\nBUILD_ID=rolling\n"  // rolling: no VERSION_ID
        #expect(NodeFingerprint.osRelease(arch).id == "arch" && NodeFingerprint.osRelease(arch).versionID == nil)
        #expect(NodeFingerprint.osRelease("ID=\"a\\\"b\"").id == "a\"b")
        #expect(NodeFingerprint.osRelease("").id == nil && NodeFingerprint.osRelease("ID=").id == nil)
    }

    @Test func nvidiaSMIOutput() {
        let two = "NVIDIA A100-SXM4-40GB\nNVIDIA A100-SXM4-40GB\n"
        #expect(NodeFingerprint.nvidiaGPUNames(two) == ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"])
        #expect(NodeFingerprint.nvidiaGPUNames("  Tesla T4  \r\n\n") == ["Tesla T4"])
        #expect(NodeFingerprint.nvidiaGPUNames("") == [])
        let failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
        #expect(NodeFingerprint.nvidiaGPUNames(failed) == [])
        #expect(NodeFingerprint.nvidiaGPUNames("No devices were found\n") == [])
        #expect(NodeFingerprint.nvidiaGPUNames("bad\u{1b}[31mname\n") == [])
    }

    @Test func memoryAndCPUQuota() {
        #expect(NodeFingerprint.memTotalKB("MemTotal:       16318480 kB\nMemFree: 1 kB\n") == 16_318_480)
        #expect(NodeFingerprint.memTotalKB("MemFree: 1 kB\n") == nil)
        #expect(NodeFingerprint.cgroupV2CPULimit("max 100000\n") == nil)
        #expect(NodeFingerprint.cgroupV2CPULimit("250000 100000\n") == 2.5)
        #expect(NodeFingerprint.cgroupV1CPULimit(quota: "-1\n", period: "100000\n") == nil)
        #expect(NodeFingerprint.cgroupV1CPULimit(quota: "50000\n", period: "100000\n") == 0.5)
        #expect(NodeFingerprint.cpus() >= 0.01)
    }

    @Test func attributesOfThisHostCarryTheLabels() async throws {
        var text = NodeConfigTests.toml("""
            [node.labels]
            site = "hospital-a"
            sensors = ["camera", "lidar"]
            rack = 4
            trusted = true
            """)
        text = text.replacingOccurrences(of: "id = \"n1\"", with: "id = \"n1\"\nwork_dir = \"/tmp\"")
        let config = try NodeConfig.parse(text, source: "t", environment: [:])
        let a = await NodeFingerprint(config: config, launchers: ["process"]).refresh()
        #expect(a["labels.site"] == .string("hospital-a"))
        #expect(a["labels.sensors"] == .list([.string("camera"), .string("lidar")]))
        #expect(a["labels.rack"] == .number(4) && a["labels.trusted"] == .bool(true))
        #expect(a["node_id"] == .string("n1") && a["launchers"] == .list([.string("process")]))
        #expect(a["version"] == .string(FEMVersion.string))
        guard case .number(let cpus)? = a["cpus"], case .number(let mem)? = a["memory_mb"],
              case .number? = a["disk_free_mb"], case .string(let arch)? = a["arch"], case .string? = a["kernel"],
              case .number? = a["gpus"] else {
            Issue.record("missing host attributes: \(a)")
            return
        }
        #expect(cpus > 0 && mem > 0 && !arch.isEmpty)
        let verdict = try ConstraintExpression.parse("\"camera\" in labels.sensors and cpus >= 0.01").evaluate(a)
        #expect(verdict.matched, "\(verdict)")
    }

    @Test func labelsMustBeIdentifiersWithScalarValues() {
        let problems = NodeConfigTests.problems(NodeConfigTests.toml("""
            [node.labels]
            "bad key" = "x"
            nested = { a = 1 }
            mixed = ["a", { b = 2 }]
            ok = ["a", 1, true]
            """))
        #expect(problems.contains { $0.contains("node.labels: the key \"bad key\" is not a simple identifier") }, "\(problems)")
        #expect(problems.contains("node.labels.nested: expected a string, number, boolean or a list of them, got table"),
                "\(problems)")
        #expect(problems.contains("node.labels.mixed[1]: expected a string, number or boolean, got table"), "\(problems)")
        #expect(!problems.contains { $0.contains("node.labels.ok") } && problems.count == 3, "\(problems)")
        let notTable = NodeConfigTests.problems(NodeConfigTests.toml("labels = 3"))
        #expect(notTable.contains { $0.hasPrefix("node.labels: expected a table") }, "\(notTable)")
    }
}
