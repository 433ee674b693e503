import FEMCore
import FEMSystem
import Foundation
import Synchronization

/// What this node is, as constraint expressions see it (docs/templates/README.md, "Constraints"): CPUs, memory,
/// GPUs, free disk under the work dir, OS, arch, kernel, fem-client version, enabled launchers, dataset ids, node id,
/// and the config's `[node.labels]` as `labels.<key>`. Computed at start and again before every heartbeat; the
/// GPU list (from `nvidia-smi`, which can be slow) is read once and kept.
public final class NodeFingerprint: Sendable {
    /// The config as it is now (a reload may change labels and datasets).
    let config: @Sendable () -> NodeConfig
    let launchers: [String]
    private let state = Mutex<(attributes: NodeAttributes, gpus: [String]?)>((NodeAttributes(), nil))

    public convenience init(config: NodeConfig, launchers: [String]) {
        self.init(config: { config }, launchers: launchers)
    }

    public init(config: @escaping @Sendable () -> NodeConfig, launchers: [String]) {
        self.config = config
        self.launchers = launchers
        let first = compute(gpus: nil)
        state.withLock { $0.attributes = first }
    }

    /// The host's attributes as last computed, with the labels and datasets of the config as it is now (a reload
    /// applies at once, not at the next heartbeat).
    public var current: NodeAttributes {
        var a = state.withLock { $0.attributes }
        Self.apply(config(), to: &a)
        return a
    }

    /// What comes from the config: dataset ids and `labels.<key>` (labels no longer configured are removed).
    static func apply(_ config: NodeConfig, to a: inout NodeAttributes) {
        a.values = a.values.filter { !$0.key.hasPrefix("labels.") }
        a["datasets"] = .list(config.datasets.keys.sorted().map(AttributeValue.string))
        for (key, value) in config.labels { a["labels.\(key)"] = value }
    }

    /// Computes the attributes again (GPUs on the first call only) and returns them.
    @discardableResult
    public func refresh() async -> NodeAttributes {
        var gpus = state.withLock { $0.gpus }
        if gpus == nil { gpus = await Self.detectGPUs() }
        let attributes = compute(gpus: gpus)
        state.withLock { $0 = (attributes, gpus) }
        return attributes
    }

    func compute(gpus: [String]?) -> NodeAttributes {
        let config = self.config()
        var a = NodeAttributes()
        a["node_id"] = .string(config.nodeID)
        a["version"] = .string(FEMVersion.string)
        a["cpus"] = .number(Self.cpus())
        if let kb = Self.memTotalKB(Self.read("/proc/meminfo") ?? "") { a["memory_mb"] = .number(Double(kb / 1024)) }
        a["gpus"] = .number(Double(gpus?.count ?? 0))
        if let model = gpus?.first { a["gpu_model"] = .string(model) }
        if let bytes = freeDiskBytes(at: config.workDir) { a["disk_free_mb"] = .number(Double(bytes >> 20)) }
        let os = Self.osRelease(Self.read("/etc/os-release") ?? Self.read("/usr/lib/os-release") ?? "")
        if let id = os.id { a["os"] = .string(id) }
        if let v = os.versionID { a["os_version"] = .string(v) }
        let u = HostInfo.uname()
        a["arch"] = .string(u.machine)
        a["kernel"] = .string(u.release)
        a["launchers"] = .list(launchers.sorted().map(AttributeValue.string))
        Self.apply(config, to: &a)
        return a
    }

    // MARK: - Parts (pure where they can be, so they are tested with fixtures)

    static func read(_ path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 1 << 16) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// `ID` and `VERSION_ID` from os-release(5) text: `KEY=value`, the value optionally in double or single quotes
    /// (with `\"`, `\\`, `\$` and `` \` `` escapes in double quotes). Lowercased ID, as the spec says it is.
    static func osRelease(_ text: String) -> (id: String?, versionID: String?) {
        var id: String?, version: String?
        for line in text.split(whereSeparator: \.isNewline) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.hasPrefix("#"), let eq = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<eq]
            guard key == "ID" || key == "VERSION_ID" else { continue }
            var value = Substring(trimmed[trimmed.index(after: eq)...])
            if let q = value.first, q == "\"" || q == "'", value.count >= 2, value.last == q {
                value = value.dropFirst().dropLast()
                if q == "\"" {
                    var out = ""
                    var escaped = false
                    for c in value {
                        if escaped { out.append(c); escaped = false } else if c == "\\" { escaped = true } else { out.append(c) }
                    }
                    value = Substring(out)
                }
            }
            let clean = String(value.prefix(64)).filter { !$0.isNewline && !($0.asciiValue.map { $0 < 0x20 } ?? false) }
            guard !clean.isEmpty else { continue }
            if key == "ID" { id = clean.lowercased() } else { version = clean }
        }
        return (id, version)
    }

    /// MemTotal in kB from /proc/meminfo.
    static func memTotalKB(_ text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kb = Int(fields[1]) { return kb }
        }
        return nil
    }

    /// GPU names from `nvidia-smi --query-gpu=name --format=csv,noheader`: one a line, blank lines and lines that
    /// are not names (an error text such as "NVIDIA-SMI has failed ...") left out.
    static func nvidiaGPUNames(_ output: String) -> [String] {
        output.split(whereSeparator: \.isNewline).compactMap { line in
            let name = line.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name.count <= 128, !name.lowercased().contains("failed"),
                  !name.lowercased().hasPrefix("no devices"),
                  name.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F }) else { return nil }
            return name
        }
    }

    /// A CPU limit from cgroup v2's `cpu.max` (`max 100000` or `200000 100000`): quota / period, nil when unlimited.
    static func cgroupV2CPULimit(_ text: String) -> Double? {
        let f = text.split(whereSeparator: \.isWhitespace)
        guard f.count == 2, f[0] != "max", let quota = Double(f[0]), let period = Double(f[1]), quota > 0, period > 0
        else { return nil }
        return quota / period
    }

    /// A CPU limit from cgroup v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: unlimited).
    static func cgroupV1CPULimit(quota: String, period: String) -> Double? {
        guard let q = Double(quota.trimmingCharacters(in: .whitespacesAndNewlines)),
              let p = Double(period.trimmingCharacters(in: .whitespacesAndNewlines)), q > 0, p > 0 else { return nil }
        return q / p
    }

    /// Online CPUs, capped by the cgroup CPU quota of the daemon's cgroup when there is one (v2, else v1).
    static func cpus() -> Double {
        var n = Double(HostInfo.onlineCPUs())
        var limit: Double?
        if let own = read("/proc/self/cgroup")?.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) {
            let path = own.dropFirst(3).trimmingCharacters(in: .whitespaces)
            if !path.contains(".."), let text = read("/sys/fs/cgroup\(path == "/" ? "" : path)/cpu.max") {
                limit = cgroupV2CPULimit(text)
            }
        }
        if limit == nil, let q = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
           let p = read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") {
            limit = cgroupV1CPULimit(quota: q, period: p)
        }
        if let limit { n = min(n, (limit * 100).rounded() / 100) }
        return n
    }

    /// `nvidia-smi` on the daemon's PATH, run (never through a shell) with a deadline; no GPUs when it is absent,
    /// fails or hangs.
    static func detectGPUs() async -> [String] {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let candidates = path.split(separator: ":").map { "\($0)/nvidia-smi" }
        guard let exe = candidates.first(where: { $0.hasPrefix("/") && FileManager.default.isExecutableFile(atPath: $0) })
        else { return [] }
        do {
            let result = try await ChildProcess.run(executable: exe, arguments: ["--query-gpu=name", "--format=csv,noheader"],
                                                    environment: ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"],
                                                    limit: 64 << 10, deadline: .seconds(10))
            return result.succeeded ? nvidiaGPUNames(result.stdout) : []
        } catch {
            return []
        }
    }
}
