import FEMCore
import FEMSystem
import Foundation

/// The node's capacity for task resources: `[node.capacity]` where configured, else the host's own values as the
/// fingerprint reads them (CPUs online within the daemon's cgroup limit, MemTotal, free disk under the work dir).
enum HostCapacity {
    static func of(_ config: NodeConfig) -> Capacity {
        Capacity(cpus: config.capacityCPUs.map(Double.init) ?? NodeFingerprint.cpus(),
                 memoryMB: config.capacityMemoryMB
                     ?? NodeFingerprint.memTotalKB(NodeFingerprint.read("/proc/meminfo") ?? "").map { $0 / 1024 } ?? 0,
                 // GPUs are never guessed: tasks may reserve only what the administrator says the node has.
                 gpus: config.capacityGPUs ?? 0,
                 storageMB: config.capacityStorageMB
                     ?? freeDiskBytes(at: config.workDir).map { Int(min($0 >> 20, UInt64(Int.max))) } ?? 0)
    }
}
