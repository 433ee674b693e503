#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The cgroup filesystems this host offers for host tasks: cgroup v2 when its root has the memory controller,
/// else the v1 hierarchies (memory and pids needed; cpu, cpuacct and freezer used when mounted).
public enum CgroupSupport: Sendable, Equatable {
    case v2(root: String)
    /// Controller name → the mount of its hierarchy (`cpu` and `cpuacct` may share one).
    case v1(mounts: [String: String])
    /// Why no usable cgroup exists.
    case unavailable(String)

    public static let v1Controllers = ["memory", "pids", "cpu", "cpuacct", "freezer"]

    /// Reads /proc/self/mounts. `mounts` is for tests.
    public static func detect(mounts text: String? = nil) -> CgroupSupport {
        guard let text = text ?? (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) else {
            return .unavailable("cannot read /proc/self/mounts")
        }
        var v2Roots: [String] = []
        var v1: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4 else { continue }
            let path = String(f[1]).replacingOccurrences(of: "\\040", with: " ")
            if f[2] == "cgroup2" {
                v2Roots.append(path)
            } else if f[2] == "cgroup" {
                let options = f[3].split(separator: ",")
                for c in v1Controllers where options.contains(Substring(c)) && v1[c] == nil { v1[c] = path }
            }
        }
        var v2Problem: String?
        for root in v2Roots {
            let controllers = TaskCgroup.read("\(root)/cgroup.controllers")?.split(separator: " ").map(String.init) ?? []
            if controllers.contains("memory") && controllers.contains("pids") { return .v2(root: root) }
            v2Problem = "the cgroup v2 hierarchy at \(root) has no memory and pids controllers"
        }
        if v1["memory"] != nil && v1["pids"] != nil { return .v1(mounts: v1) }
        let missing = ["memory", "pids"].filter { v1[$0] == nil }
        return .unavailable((v2Problem.map { "\($0), and " } ?? "no cgroup v2 hierarchy with a memory controller, and ")
                            + "no cgroup v1 \(missing.joined(separator: " or ")) hierarchy is mounted")
    }
}

/// One host task's cgroup, `fem-client/<node-id>/<task-id>` under the hierarchy root(s): its limits, its members,
/// its counters (CPU time, peak memory, OOM kills), killing everything in it, and removing it. Pure file I/O on
/// the cgroup filesystems; the task's process joins the cgroup itself before exec (see ChildProcess.Confinement).
public struct TaskCgroup: Sendable, Equatable {
    public struct Limits: Sendable, Equatable {
        public var memoryBytes: UInt64?
        public var cpus: Double?
        public var pids: Int?

        public init(memoryBytes: UInt64?, cpus: Double?, pids: Int?) {
            self.memoryBytes = memoryBytes
            self.cpus = cpus
            self.pids = pids
        }
    }

    /// What the cgroup counted, read after its processes ended.
    public struct Usage: Sendable, Equatable {
        public var cpuSeconds: Double?
        public var peakMemoryBytes: UInt64?
        public var oomKills: Int
    }

    public let version: Int
    /// Controller → the task's folder in that controller's hierarchy (v2: the same folder for all).
    public let dirs: [String: String]

    /// The task's folders, one per hierarchy.
    public var paths: [String] { Array(Set(dirs.values)).sorted() }
    /// The files the task's process writes itself into.
    public var procsFiles: [String] { paths.map { "\($0)/cgroup.procs" } }

    public static func relative(node: String, task: String) -> String { "fem-client/\(node)/\(task)" }

    static func folders(_ support: CgroupSupport, relative: String) -> (Int, [String: String])? {
        switch support {
        case .v2(let root):
            let dir = "\(root)/\(relative)"
            return (2, Dictionary(uniqueKeysWithValues: ["memory", "pids", "cpu"].map { ($0, dir) }))
        case .v1(let mounts):
            return (1, mounts.mapValues { "\($0)/\(relative)" })
        case .unavailable:
            return nil
        }
    }

    /// Creates the task's cgroup (the parents too, enabling the controllers on v2) and writes its limits. A
    /// folder left by an earlier run of the same task is emptied and reused.
    public static func create(node: String, task: String, limits: Limits, support: CgroupSupport) throws -> TaskCgroup {
        let rel = relative(node: node, task: task)
        guard let (version, dirs) = folders(support, relative: rel) else {
            if case .unavailable(let why) = support { throw SystemError("cgroup", errno: ENOTSUP, why) }
            throw SystemError("cgroup", errno: ENOTSUP)
        }
        if case .v2(let root) = support {
            // Controllers must be enabled in every parent's subtree_control (memory and pids are required).
            var parent = root
            for part in ["fem-client", node] {
                try enableControllers(in: parent)
                parent += "/\(part)"
                try makeDirectory(parent)
            }
            try enableControllers(in: parent)
        } else {
            for mount in Set(dirs.values.map { ($0 as NSString).deletingLastPathComponent }) {
                try makeDirectories(mount)
            }
        }
        for dir in Set(dirs.values) { try makeDirectory(dir) }
        let cgroup = TaskCgroup(version: version, dirs: dirs)
        if !cgroup.members().isEmpty { _ = cgroup.killAll(timeout: .seconds(5)) }
        try cgroup.apply(limits)
        return cgroup
    }

    /// The cgroup of a task if its folder exists (after a daemon restart).
    public static func existing(node: String, task: String, support: CgroupSupport) -> TaskCgroup? {
        guard let (version, dirs) = folders(support, relative: relative(node: node, task: task)) else { return nil }
        let present = dirs.filter { isDirectory($0.value) }
        return present.isEmpty ? nil : TaskCgroup(version: version, dirs: present)
    }

    func apply(_ limits: Limits) throws {
        if version == 2 {
            let dir = dirs["memory"] ?? ""
            if let m = limits.memoryBytes {
                try Self.write("\(dir)/memory.max", "\(m)")
                if Self.exists("\(dir)/memory.swap.max") { try Self.write("\(dir)/memory.swap.max", "0") }
            }
            if let p = limits.pids { try Self.write("\(dir)/pids.max", "\(p)") }
            if let c = limits.cpus, Self.exists("\(dir)/cpu.max") {
                try Self.write("\(dir)/cpu.max", "\(max(1000, Int(c * 100_000))) 100000")
            }
            return
        }
        if let m = limits.memoryBytes, let dir = dirs["memory"] {
            try Self.write("\(dir)/memory.limit_in_bytes", "\(m)")
            // No swap either, where swap accounting is on (memsw must not be below the memory limit).
            if Self.exists("\(dir)/memory.memsw.limit_in_bytes") {
                try Self.write("\(dir)/memory.memsw.limit_in_bytes", "\(m)")
            }
        }
        if let p = limits.pids, let dir = dirs["pids"] { try Self.write("\(dir)/pids.max", "\(p)") }
        if let c = limits.cpus, let dir = dirs["cpu"], Self.exists("\(dir)/cpu.cfs_quota_us") {
            try Self.write("\(dir)/cpu.cfs_period_us", "100000")
            try Self.write("\(dir)/cpu.cfs_quota_us", "\(max(1000, Int(c * 100_000)))")
        }
    }

    /// Every process in the cgroup (all hierarchies).
    public func members() -> Set<Int32> {
        var pids = Set<Int32>()
        for file in procsFiles {
            for line in (Self.read(file) ?? "").split(separator: "\n") {
                if let pid = Int32(line) { pids.insert(pid) }
            }
        }
        return pids
    }

    /// Sends `signal` to every process in the cgroup once (a polite TERM; the kill is `killAll`).
    public func signalAll(_ signal: Int32) {
        for pid in members() where pid > 1 { kill(pid, signal) }
    }

    /// Kills everything in the cgroup, including processes that fork while it happens: v2 `cgroup.kill`; v1:
    /// freeze, SIGKILL every member, thaw, until it is empty. Returns true once no process is left.
    @discardableResult
    public func killAll(timeout: Duration = .seconds(10)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        let memoryDir = dirs["memory"] ?? paths.first ?? ""
        if version == 2 && Self.exists("\(memoryDir)/cgroup.kill") {
            try? Self.write("\(memoryDir)/cgroup.kill", "1")
            while ContinuousClock.now < deadline {
                if members().isEmpty { return true }
                Thread.sleep(forTimeInterval: 0.01)
            }
            return members().isEmpty
        }
        let freezer: (file: String, frozen: String, thawed: String)? = version == 2
            ? "\(memoryDir)/cgroup.freeze".nilIfMissing.map { ($0, "1", "0") }
            : dirs["freezer"].map { "\($0)/freezer.state" }?.nilIfMissing.map { ($0, "FROZEN", "THAWED") }
        while ContinuousClock.now < deadline {
            let pids = members()
            if pids.isEmpty { return true }
            if let freezer {
                try? Self.write(freezer.file, freezer.frozen)
                // v1 goes through FREEZING; wait (briefly) until every member is frozen.
                let until = ContinuousClock.now + .milliseconds(200)
                while version == 1, ContinuousClock.now < until,
                      Self.read(freezer.file)?.trimmingCharacters(in: .whitespacesAndNewlines) != "FROZEN" {
                    Thread.sleep(forTimeInterval: 0.002)
                }
            }
            for pid in members() where pid > 1 { kill(pid, SIGKILL) }
            if let freezer { try? Self.write(freezer.file, freezer.thawed) }
            Thread.sleep(forTimeInterval: 0.01)
        }
        if let freezer { try? Self.write(freezer.file, freezer.thawed) }
        return members().isEmpty
    }

    /// The cgroup's own counters (read after its processes ended, before `remove`).
    public func usage() -> Usage {
        var u = Usage(cpuSeconds: nil, peakMemoryBytes: nil, oomKills: 0)
        if version == 2 {
            let dir = dirs["memory"] ?? ""
            if let usec = Self.keyed(Self.read("\(dir)/cpu.stat"), "usage_usec") { u.cpuSeconds = Double(usec) / 1e6 }
            u.peakMemoryBytes = Self.read("\(dir)/memory.peak").flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            u.oomKills = Int(Self.keyed(Self.read("\(dir)/memory.events"), "oom_kill") ?? 0)
            return u
        }
        if let dir = dirs["cpuacct"], let ns = Self.read("\(dir)/cpuacct.usage")
            .flatMap({ UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            u.cpuSeconds = Double(ns) / 1e9
        }
        if let dir = dirs["memory"] {
            u.peakMemoryBytes = Self.read("\(dir)/memory.max_usage_in_bytes")
                .flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            u.oomKills = Int(Self.keyed(Self.read("\(dir)/memory.oom_control"), "oom_kill") ?? 0)
        }
        return u
    }

    /// Kills what is left and removes the task's folders (retrying while the kernel still counts exiting members).
    public func remove(timeout: Duration = .seconds(5)) throws {
        killAll(timeout: timeout)
        let deadline = ContinuousClock.now + timeout
        for dir in paths where Self.isDirectory(dir) {
            while rmdir(dir) != 0 {
                let e = errno
                if e == ENOENT { break }
                guard e == EBUSY, ContinuousClock.now < deadline else {
                    throw SystemError("rmdir", errno: e, "cannot remove the task's cgroup \(dir)")
                }
                killAll(timeout: .milliseconds(100))
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
    }

    /// Creates and removes a scratch cgroup under `fem-client/<node>`: nil when that works, else why not.
    public static func probe(node: String, support: CgroupSupport = .detect()) -> String? {
        if case .unavailable(let why) = support { return why }
        do {
            let cg = try create(node: node, task: "probe-\(getpid())",
                                limits: Limits(memoryBytes: 64 << 20, cpus: 1, pids: 16), support: support)
            try cg.remove()
            return nil
        } catch {
            return "\(error)"
        }
    }

    // MARK: - File helpers

    static func enableControllers(in dir: String) throws {
        let available = Set(read("\(dir)/cgroup.controllers")?.split(whereSeparator: { $0 == " " || $0 == "\n" })
            .map(String.init) ?? [])
        for c in ["memory", "pids", "cpu"] where available.contains(c) {
            do {
                try write("\(dir)/cgroup.subtree_control", "+\(c)")
            } catch {
                // cpu is a nicety (a busy realtime task can refuse it); memory and pids are required.
                if c != "cpu" { throw error }
            }
        }
        for c in ["memory", "pids"] where !available.contains(c) {
            throw SystemError("cgroup.controllers", errno: ENOTSUP, "\(dir) does not offer the \(c) controller")
        }
    }

    static func makeDirectory(_ dir: String) throws {
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            throw SystemError("mkdir", errno: errno, "cannot create the cgroup \(dir)")
        }
    }

    static func makeDirectories(_ dir: String) throws {
        if isDirectory(dir) { return }
        try makeDirectories((dir as NSString).deletingLastPathComponent)
        try makeDirectory(dir)
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Writes `value` in one write(2), as the cgroup filesystem wants.
    static func write(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open", errno: errno, "cannot open \(path)") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n == bytes.count { return }
            if n < 0 && errno == EINTR { continue }
            throw SystemError("write", errno: n < 0 ? errno : EIO, "cannot write \"\(value)\" to \(path)")
        }
    }

    /// The number after `key ` in a `key value` per line file (cpu.stat, memory.events, memory.oom_control).
    static func keyed(_ text: String?, _ key: String) -> UInt64? {
        for line in (text ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == key { return UInt64(parts[1]) }
        }
        return nil
    }
}

private extension String {
    var nilIfMissing: String? { access(self, F_OK) == 0 ? self : nil }
}
