import CLinux
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Limits a task's cgroup holds. Nil: not limited.
public struct CgroupLimits: Sendable, Equatable {
    public var memoryBytes: Int?
    public var pids: Int?
    public var cpus: Double?

    public init(memoryBytes: Int? = nil, pids: Int? = nil, cpus: Double? = nil) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpus = cpus
    }
}

/// What a task's cgroup counted.
public struct CgroupUsage: Sendable, Equatable {
    /// Processes the kernel's OOM killer ended because this cgroup reached its memory limit.
    public var oomKills = 0
    /// How often usage reached the memory limit (reclaim may have succeeded).
    public var limitHits = 0
    public var peakMemoryBytes: Int?
    public var cpuSeconds: Double?
}

/// One task's cgroup, a directory the node makes under its own (`/fem-client/<node>/<task>`), that holds the task's
/// limits and outlives what runs in it, so its counters can be read after the work ended: a container engine puts
/// the container's own cgroup below it (`CgroupParent`) and removes that at exit, taking the container's counters
/// with it; this one stays until `remove()`.
///
/// OOM kills are read from the counters, never guessed from an exit code: on v2 `memory.events` counts `oom_kill`
/// hierarchically; on v1 the kill is counted in the victim's own cgroup (gone with a container), so the node also
/// registers an eventfd on `memory.oom_control` (`cgroup.event_control`) when it makes the cgroup: the kernel
/// signals it whenever this cgroup's limit invokes the OOM killer. The eventfd sits in the `EventReactor`, which
/// adds each notice to the count the moment it arrives (no thread waits on it, nothing polls); `usage()` drains
/// what the reactor has not read yet under the same lock, so the count is exact whichever reads first.
public final class TaskCgroup: Sendable {
    public let host: CgroupHost
    /// Relative to each hierarchy's root, starting with `/` (what dockerd's `CgroupParent` takes).
    public let path: String
    private let oomEvents: OOMEvents?
    private let oomWatch: UInt64?

    /// The v1 OOM eventfd and the kills it counted. Owns the descriptor: the reactor's watch holds it, so it is
    /// closed only after the watch ended.
    private final class OOMEvents: Sendable {
        let fd: Int32
        /// The total, and whether the cgroup was removed: the kernel signals the eventfd once more when its cgroup
        /// goes, which is no OOM kill.
        private let total = Mutex((count: 0, retired: false))
        /// Called back (the reactor's thread) when the cgroup's OOM killer ran, with the total so far.
        let notice: @Sendable (Int) -> Void

        init(fd: Int32, notice: @escaping @Sendable (Int) -> Void) {
            self.fd = fd
            self.notice = notice
        }
        deinit { close(fd) }

        /// Adds what the eventfd holds to the total and returns the total.
        @discardableResult
        func drain() -> Int {
            total.withLock { total in
                var value: UInt64 = 0
                if Glibc.read(fd, &value, 8) == 8, !total.retired { total.count += Int(value) }
                return total.count
            }
        }

        /// Counts what is pending, then ignores the eventfd from now on (before the cgroup is removed).
        func retire() {
            drain()
            total.withLock { $0.retired = true }
        }
    }

    private init(host: CgroupHost, path: String, oomEvent: Int32?, onOOM: (@Sendable (Int) -> Void)? = nil) {
        self.host = host
        self.path = path
        if let oomEvent {
            let events = OOMEvents(fd: oomEvent, notice: onOOM ?? { _ in })
            oomEvents = events
            oomWatch = EventReactor.shared?.watch(oomEvent) {
                let before = events.drain()
                events.notice(before)
                return true
            }
        } else {
            oomEvents = nil
            oomWatch = nil
        }
    }

    deinit {
        if let oomWatch { EventReactor.shared?.unwatch(oomWatch) }
    }

    /// `/<root>/<node>/<task>` after checking each part is a plain name.
    public static func relativePath(root: String, node: String, task: String) throws -> String {
        for part in [root, node, task] {
            guard !part.isEmpty, part != ".", part != "..", part.utf8.count <= 200,
                  part.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw SystemError("cgroup", errno: EINVAL, "\"\(part)\" cannot name a cgroup")
            }
        }
        return "/\(root)/\(node)/\(task)"
    }

    /// Makes the cgroup (and its parents) with `limits`. An existing one (a restarted task) is reused.
    /// `onOOM` (v1) is told, on the event reactor's thread, each time the cgroup's OOM killer ran (with the total so
    /// far); on v2 the counters are read at the end only.
    public static func create(host: CgroupHost, path: String, limits: CgroupLimits,
                              onOOM: (@Sendable (Int) -> Void)? = nil) throws -> TaskCgroup {
        switch host.version {
        case .v2:
            guard let root = host.roots[""] else { throw SystemError("cgroup", errno: ENOENT, "no cgroup v2 mount") }
            // Each level must hand the controllers down to the next (`cgroup.subtree_control`).
            var dir = root
            for part in path.split(separator: "/") {
                for controller in ["memory", "pids", "cpu"] {
                    try? write("+\(controller)", to: "\(dir)/cgroup.subtree_control")
                }
                dir += "/\(part)"
                try makeDirectory(dir)
            }
            if let bytes = limits.memoryBytes {
                try write("\(bytes)", to: "\(dir)/memory.max")
                try? write("0", to: "\(dir)/memory.swap.max")
            }
            if let pids = limits.pids { try? write("\(pids)", to: "\(dir)/pids.max") }
            if let cpus = limits.cpus { try? write("\(Int(cpus * 100_000)) 100000", to: "\(dir)/cpu.max") }
            return TaskCgroup(host: host, path: path, oomEvent: nil)
        case .v1:
            for dir in host.directories(path) { try makeDirectory(dir) }
            var oomEvent: Int32?
            if let memory = host.directory("memory", path) {
                if let bytes = limits.memoryBytes {
                    try write("\(bytes)", to: "\(memory)/memory.limit_in_bytes")
                    // Without swap accounting the file is absent; with it, swap must not extend the limit.
                    if FileManager.default.fileExists(atPath: "\(memory)/memory.memsw.limit_in_bytes") {
                        try write("\(bytes)", to: "\(memory)/memory.memsw.limit_in_bytes")
                    }
                }
                oomEvent = try registerOOMEvent(memory)
            }
            if let pids = limits.pids, let dir = host.directory("pids", path) {
                try write("\(pids)", to: "\(dir)/pids.max")
            }
            if let cpus = limits.cpus, let dir = host.directory("cpu", path) {
                try? write("100000", to: "\(dir)/cpu.cfs_period_us")
                try? write("\(Int(cpus * 100_000))", to: "\(dir)/cpu.cfs_quota_us")
            }
            return TaskCgroup(host: host, path: path, oomEvent: oomEvent, onOOM: onOOM)
        }
    }

    /// A cgroup made by an earlier run of the daemon, or nil if there is none. Its v1 OOM notifications died with
    /// that daemon; `usage()` then falls back to the counters that stay (see there).
    public static func existing(host: CgroupHost, path: String) -> TaskCgroup? {
        let probe = host.version == .v2 ? host.roots[""].map { $0 + path } : host.directory("memory", path)
        guard let probe, FileManager.default.fileExists(atPath: probe) else { return nil }
        return TaskCgroup(host: host, path: path, oomEvent: nil)
    }

    /// Whether OOM kills are counted by an event this object holds (v1, made by this daemon) or by the kernel's
    /// counters (v2): true means `usage().oomKills` is exact.
    public var countsOOMKillsExactly: Bool { host.version == .v2 || oomEvents != nil }

    private static func registerOOMEvent(_ memory: String) throws -> Int32 {
        let efd = fem_eventfd_nonblock()
        guard efd >= 0 else { throw SystemError("eventfd", errno: errno, "cannot watch \(memory) for OOM kills") }
        let control = open("\(memory)/memory.oom_control", O_RDONLY | O_CLOEXEC)
        guard control >= 0 else {
            let e = errno
            close(efd)
            throw SystemError("open", errno: e, "\(memory)/memory.oom_control")
        }
        // The kernel keeps what it needs of the control file; the registration lasts as long as the eventfd.
        defer { close(control) }
        do {
            try write("\(efd) \(control)", to: "\(memory)/cgroup.event_control")
        } catch {
            close(efd)
            throw error
        }
        return efd
    }

    /// The counters now. Call it after the work ended (and again: OOM events are accumulated, not lost).
    public func usage() -> CgroupUsage {
        var u = CgroupUsage()
        switch host.version {
        case .v2:
            guard let dir = host.roots[""].map({ $0 + path }) else { return u }
            let events = Self.keyed(Self.read("\(dir)/memory.events"))
            u.oomKills = events["oom_kill"] ?? 0
            u.limitHits = events["max"] ?? 0
            u.peakMemoryBytes = Self.read("\(dir)/memory.peak").flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            u.cpuSeconds = Self.keyed(Self.read("\(dir)/cpu.stat"))["usage_usec"].map { Double($0) / 1e6 }
        case .v1:
            if let memory = host.directory("memory", path) {
                // Kills of processes that live in this cgroup itself (host tasks) are counted here; kills inside a
                // child cgroup (a container) only through the eventfd.
                let own = Self.keyed(Self.read("\(memory)/memory.oom_control"))["oom_kill"] ?? 0
                u.oomKills = max(own, oomEvents?.drain() ?? 0)
                u.limitHits = Self.read("\(memory)/memory.failcnt").flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
                u.peakMemoryBytes = Self.read("\(memory)/memory.max_usage_in_bytes")
                    .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
            if let cpu = host.directory("cpuacct", path) {
                u.cpuSeconds = Self.read("\(cpu)/cpuacct.usage")
                    .flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.map { $0 / 1e9 }
            }
        }
        return u
    }

    /// The pids in the cgroup and every cgroup below it.
    public func processes() -> [Int32] {
        guard let dir = host.version == .v2 ? host.roots[""].map({ $0 + path }) : host.directory("memory", path) else {
            return []
        }
        var pids: [Int32] = []
        var stack = [dir]
        while let d = stack.popLast() {
            pids += (Self.read("\(d)/cgroup.procs") ?? "").split(separator: "\n").compactMap { Int32($0) }
            let children = (try? FileManager.default.contentsOfDirectory(atPath: d)) ?? []
            for c in children where Self.isDirectory("\(d)/\(c)") { stack.append("\(d)/\(c)") }
        }
        return pids
    }

    /// Ends everything in the cgroup, whatever it did to escape its process group (`setsid`, double forks):
    /// `cgroup.kill` on v2; on v1 freeze, SIGKILL every member, thaw, until it is empty. Returns whether it is empty.
    @discardableResult
    public func killAll(timeout: Duration = .seconds(5)) -> Bool {
        let deadline = ContinuousClock.now + timeout
        if host.version == .v2, let dir = host.roots[""].map({ $0 + path }),
           (try? Self.write("1", to: "\(dir)/cgroup.kill")) != nil {
            while ContinuousClock.now < deadline, !processes().isEmpty { usleep(5_000) }
            return processes().isEmpty
        }
        let freezer = host.version == .v1 ? host.directory("freezer", path) : nil
        while ContinuousClock.now < deadline {
            let pids = processes()
            if pids.isEmpty { return true }
            if let freezer { try? Self.write("FROZEN", to: "\(freezer)/freezer.state") }
            for pid in pids { kill(pid, SIGKILL) }
            if let freezer { try? Self.write("THAWED", to: "\(freezer)/freezer.state") }
            usleep(5_000)
        }
        return processes().isEmpty
    }

    /// Moves the processes of `child`, a cgroup an engine made below this one for its own helpers (podman puts
    /// `conmon`, and the `podman container cleanup` it starts at the end, in `<CgroupParent>/conmon`), into the
    /// sibling cgroup `holder` (made if needed, no limits), out of the task's limits: a memory kill then never takes
    /// the engine's monitor with the task. Returns how many processes moved.
    @discardableResult
    public func evict(child: String, to holder: String) -> Int {
        let mounts = host.version == .v2 ? Array(host.roots.values) : Array(Set(host.allMounts + host.roots.values))
        var moved = 0
        for mount in mounts {
            let source = mount + path + "/" + child
            guard Self.isDirectory(source) else { continue }
            let target = ((mount + path) as NSString).deletingLastPathComponent + "/" + holder
            guard (try? Self.makeDirectory(target)) != nil else { continue }
            let pids = (Self.read(source + "/cgroup.procs") ?? "").split(separator: "\n")
            for pid in pids where (try? Self.write(String(pid), to: target + "/cgroup.procs")) != nil { moved += 1 }
        }
        return moved
    }

    /// Removes the sibling cgroup `name` (an `evict` holder) where it is empty, so that `remove()` can take the
    /// node's level too; one still holding processes (another task's) stays.
    public func removeSibling(_ name: String) {
        let mounts = host.version == .v2 ? Array(host.roots.values) : Array(Set(host.allMounts + host.roots.values))
        for mount in mounts { rmdir(((mount + path) as NSString).deletingLastPathComponent + "/" + name) }
    }

    /// Removes the cgroup (after what ran in it ended) in every hierarchy, with what an engine left below it, and
    /// the node's and the root's levels where they became empty.
    public func remove() {
        oomEvents?.retire()
        let mounts = host.version == .v2 ? Array(host.roots.values) : Array(Set(host.allMounts + host.roots.values))
        for mount in mounts {
            let dir = mount + path
            guard Self.isDirectory(dir) else { continue }
            var order: [String] = []
            var stack = [dir]
            while let d = stack.popLast() {
                order.append(d)
                for c in (try? FileManager.default.contentsOfDirectory(atPath: d)) ?? [] where Self.isDirectory("\(d)/\(c)") {
                    stack.append("\(d)/\(c)")
                }
            }
            for d in order.reversed() { rmdir(d) }
            // The node's level and the root's, if nothing else uses them (rmdir refuses a non-empty one).
            var parent = (dir as NSString).deletingLastPathComponent
            for _ in 0..<2 where parent.count > mount.count {
                rmdir(parent)
                parent = (parent as NSString).deletingLastPathComponent
            }
        }
    }

    // MARK: - Files

    private static func makeDirectory(_ dir: String) throws {
        // A concurrent remove() of a sibling may take an empty parent away between the levels: try again.
        var attempt = 0
        while true {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                return
            } catch {
                attempt += 1
                if attempt >= 3 { throw SystemError("mkdir", errno: errno, "cannot make the cgroup \(dir): \(error)") }
            }
        }
    }

    static func write(_ text: String, to file: String) throws {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open", errno: errno, file) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var rc: Int
        repeat { rc = Glibc.write(fd, bytes, bytes.count) } while rc < 0 && errno == EINTR
        guard rc == bytes.count else { throw SystemError("write", errno: errno, "\(file) <- \(text)") }
    }

    static func read(_ file: String) -> String? {
        try? String(contentsOfFile: file, encoding: .utf8)
    }

    static func keyed(_ text: String?) -> [String: Int] {
        var out: [String: Int] = [:]
        for line in (text ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let n = Int(parts[1]) { out[String(parts[0])] = n }
        }
        return out
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}
