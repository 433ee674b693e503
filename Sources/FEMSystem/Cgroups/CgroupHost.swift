import Foundation

/// Which cgroup hierarchy this host offers for limiting and accounting a task's memory: the unified (v2) one where its
/// root lists the `memory` controller, the v1 controllers otherwise. Hosts in transition often mount both (systemd's
/// "hybrid" layout, as on this project's test machine: v1 controllers under /sys/fs/cgroup/<name> and a cgroup2
/// mount at /sys/fs/cgroup/unified with no controllers); the one that holds `memory` wins.
public struct CgroupHost: Sendable, Equatable, CustomStringConvertible {
    public enum Version: String, Sendable { case v1, v2 }

    public let version: Version
    /// v2: the unified mount (one entry, key ""). v1: controller name → the mount that serves it (`cpu` and
    /// `cpuacct` are often one mount, `cpu,cpuacct`).
    public let roots: [String: String]
    /// v1: every cgroup mount, the ones the node does not use included (and a hybrid host's controller-less v2
    /// one). A container engine creates the parent it is given in each of them, so each is cleaned up.
    public let allMounts: [String]

    public init(version: Version, roots: [String: String], allMounts: [String] = []) {
        self.version = version
        self.roots = roots
        self.allMounts = allMounts
    }

    public var description: String {
        switch version {
        case .v2: return "cgroup v2 at \(roots[""] ?? "?")"
        case .v1: return "cgroup v1 (" + roots.keys.sorted().joined(separator: ", ") + ")"
        }
    }

    /// The v1 controllers the node uses when present. `memory` is required; the others are used where mounted.
    public static let v1Controllers = ["memory", "pids", "cpu", "cpuacct", "freezer"]

    /// Reads `/proc/self/mounts` (or the given text) and decides. Nil when neither a v2 hierarchy with the memory
    /// controller nor a v1 memory controller is mounted.
    public static func detect(mounts: String? = nil, fileExists: (String) -> Bool = { FileManager.default.fileExists(atPath: $0) },
                              read: (String) -> String? = { try? String(contentsOfFile: $0, encoding: .utf8) }) -> CgroupHost? {
        guard let text = mounts ?? read("/proc/self/mounts") else { return nil }
        var v1: [String: String] = [:]
        var v2: [String] = []
        var all: [String] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4 else { continue }
            let path = String(f[1]), type = f[2]
            if type == "cgroup2" {
                v2.append(path)
                all.append(path)
            } else if type == "cgroup" {
                all.append(path)
                for option in f[3].split(separator: ",") where v1Controllers.contains(String(option)) {
                    v1[String(option)] = path
                }
            }
        }
        for root in v2 {
            let controllers = read("\(root)/cgroup.controllers")?.split(whereSeparator: \.isWhitespace) ?? []
            if controllers.contains("memory") { return CgroupHost(version: .v2, roots: ["": root]) }
        }
        if v1["memory"] != nil { return CgroupHost(version: .v1, roots: v1, allMounts: all) }
        return nil
    }

    /// The distinct directories the node makes for one relative cgroup path (one on v2; one per used mount on v1).
    public func directories(_ relative: String) -> [String] {
        Array(Set(roots.values)).sorted().map { $0 + relative }
    }

    func directory(_ controller: String, _ relative: String) -> String? {
        version == .v2 ? roots[""].map { $0 + relative } : roots[controller].map { $0 + relative }
    }
}
