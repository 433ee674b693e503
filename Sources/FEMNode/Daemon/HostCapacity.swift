import FEMCore
import FEMSystem
import Foundation

/// The node's capacity for task resources: `[node.capacity]` where configured, else the host's own values.
enum HostCapacity {
    static func of(_ config: NodeConfig) -> Capacity {
        Capacity(cpus: Double(config.capacityCPUs ?? onlineCPUs()),
                 memoryMB: config.capacityMemoryMB ?? totalMemoryMB() ?? 0,
                 // GPUs are never guessed: a task may use only what the administrator says the node has.
                 gpus: config.capacityGPUs ?? 0,
                 storageMB: config.capacityStorageMB
                     ?? freeDiskBytes(at: config.workDir).map { Int(min($0 >> 20, UInt64(Int.max))) } ?? 0)
    }

    static func onlineCPUs() -> Int {
        max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// `MemTotal` of /proc/meminfo, in MB (nil when it cannot be read).
    static func totalMemoryMB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kb = Int(fields[1]) else { return nil }
            return kb / 1024
        }
        return nil
    }
}
