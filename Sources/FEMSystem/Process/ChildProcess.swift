#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CLinux

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    /// The status could not be had (the child was reaped elsewhere: ECHILD); the reason says why.
    case unknown(String)

    public var description: String {
        switch self {
        case .exited(let code): return "exited(\(code))"
        case .signaled(let sig): return "signaled(\(sig))"
        case .unknown(let why): return "exit status unknown (\(why))"
        }
    }
}

/// Spawns host processes with posix_spawn: an argv array (never a shell), its own process group, a given
/// environment and working directory, stdout/stderr appended to files, stdin from /dev/null.
/// Exit is reported at once by the `EventReactor` through a pidfd, with no thread per child (Foundation.Process
/// polls and waits for grandchildren).
public enum ChildProcess {
    public struct Spawned: Sendable {
        public var pid: Int32
        /// The kernel's start time of the process (clock ticks since boot), to tell it from a reused PID later.
        public var startTime: UInt64
    }

    /// How a host task's process is confined (see `fem_spawn_confined` in CLinux/shim.h): its uid and gid (no
    /// supplementary groups), rlimits, the cgroups it joins before exec, and a network namespace of its own.
    /// It always gets PR_SET_NO_NEW_PRIVS, and umask 077.
    public struct Confinement: Sendable, Equatable {
        /// nil: keep the daemon's (only where the admin allowed unconfined host processes).
        public var uid: UInt32?
        public var gid: UInt32?
        public var openFiles: UInt64
        public var processes: UInt64
        /// RLIMIT_FSIZE in bytes; nil: unlimited.
        public var fileSize: UInt64?
        /// `cgroup.procs` files the child writes itself into before anything else (one per v1 hierarchy).
        public var cgroupProcs: [String]
        /// A new network namespace with only `lo` (up).
        public var newNetwork: Bool

        public init(uid: UInt32?, gid: UInt32?, openFiles: UInt64 = 1024, processes: UInt64 = 4096,
                    fileSize: UInt64? = nil, cgroupProcs: [String] = [], newNetwork: Bool = true) {
            self.uid = uid
            self.gid = gid
            self.openFiles = openFiles
            self.processes = processes
            self.fileSize = fileSize
            self.cgroupProcs = cgroupProcs
            self.newNetwork = newNetwork
        }
    }

    static let confinedSteps: [Int32: String] = [
        1: "setpgid", 2: "joining the task's cgroup", 3: "unshare(CLONE_NEWNET)", 4: "bringing up lo",
        5: "opening /dev/null as stdin", 6: "opening the stdout log", 7: "opening the stderr log",
        8: "chdir to the working directory", 9: "setrlimit", 10: "setgroups", 11: "setgid", 12: "setuid",
        13: "PR_SET_NO_NEW_PRIVS", 14: "resetting signals", 15: "execve", 16: "fork", 17: "pipe2",
    ]

    /// Starts `executable` confined as `confinement` says (nil: today's unconfined posix_spawn). Returns once the
    /// child has exec'd; a failing setup step throws a SystemError naming the step.
    public static func spawn(executable: String, arguments: [String], environment: [String: String],
                             workingDirectory: String, stdoutPath: String, stderrPath: String,
                             confinement: Confinement?) throws -> Spawned {
        guard let confinement else {
            return try spawn(executable: executable, arguments: arguments, environment: environment,
                             workingDirectory: workingDirectory, stdoutPath: stdoutPath, stderrPath: stderrPath)
        }
        let argv = [executable] + arguments
        let envp = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var step: Int32 = 0
        var err: Int32 = 0
        var pid: pid_t = -1
        // ETXTBSY: the executable was written a moment ago (a Python environment's wrapper) and a child spawned
        // meanwhile by another thread still holds a copy of its writer's descriptor until that child's own execve.
        // The copy goes away within milliseconds on an idle host, later on a loaded one: try again for about 1.5 s
        // (10, 20, 40, 80, then 160 ms apart) before calling it a failure.
        for attempt in 0..<13 {
            if attempt > 0 { usleep(UInt32(5_000 << min(attempt, 5))) }
            pid = spawnConfinedOnce(argv: argv, envp: envp, executable: executable, workingDirectory: workingDirectory,
                                    stdoutPath: stdoutPath, stderrPath: stderrPath, confinement: confinement,
                                    step: &step, err: &err)
            if pid > 0 || !(step == 15 && err == ETXTBSY) { break }
        }
        if pid <= 0 {
            let what = confinedSteps[step] ?? "step \(step)"
            throw SystemError(what, errno: err, "cannot start \(executable) confined")
        }
        return Spawned(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    private static func spawnConfinedOnce(argv: [String], envp: [String], executable: String,
                                          workingDirectory: String, stdoutPath: String, stderrPath: String,
                                          confinement: Confinement, step: inout Int32, err: inout Int32) -> pid_t {
        var step1: Int32 = 0
        var err1: Int32 = 0
        let pid: pid_t = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnv in
                withCStrings(confinement.cgroupProcs) { cProcs in
                    var c = fem_confinement()
                    c.cgroup_procs = UnsafeRawPointer(cProcs).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
                    c.new_network = confinement.newNetwork ? 1 : 0
                    c.uid = confinement.uid.map { Int64($0) } ?? -1
                    c.gid = confinement.gid.map { Int64($0) } ?? -1
                    c.set_rlimits = 1
                    c.nofile = confinement.openFiles
                    c.nproc = confinement.processes
                    c.fsize = confinement.fileSize ?? 0
                    c.set_umask = 1
                    return fem_spawn_confined(executable, cArgv, cEnv, workingDirectory, stdoutPath,
                                              stderrPath, &c, &step1, &err1)
                }
            }
        }
        step = step1
        err = err1
        return pid
    }

    public static func spawn(executable: String, arguments: [String], environment: [String: String],
                             workingDirectory: String, stdoutPath: String, stderrPath: String) throws -> Spawned {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_APPEND, 0o640)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o640)
        fem_spawn_add_chdir(&actions, workingDirectory)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Own process group (pgid = pid) so the whole tree can be signalled; default signal dispositions (the
        // daemon ignores SIGPIPE, and ignored signals survive exec) and an empty signal mask.
        posix_spawnattr_setpgroup(&attributes, 0)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF
                                                    | POSIX_SPAWN_SETSIGMASK))

        let argv = [executable] + arguments
        let envp = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let rc = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnv in
                posix_spawn(&pid, executable, &actions, &attributes, cArgv, cEnv)
            }
        }
        if rc != 0 {
            throw SystemError("posix_spawn", errno: rc, "cannot start \(executable)")
        }
        return Spawned(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    /// Blocks the calling thread until the child exits (tests and tools; the daemon uses `watchExit`). A child
    /// reaped elsewhere (ECHILD) is `.unknown`.
    public static func waitBlocking(pid: Int32) -> ExitStatus {
        reap(pid, block: true) ?? .unknown("waitpid returned early")
    }

    /// Waits for a child of this process without holding any thread: the reactor reaps it when its pidfd fires.
    public static func exitStatus(of pid: Int32) async -> ExitStatus {
        await watchExit(pid).wait()
    }

    /// Sends `signal` to a whole process group. Returns false when the group no longer exists.
    @discardableResult
    public static func signalGroup(_ pgid: Int32, _ signal: Int32) -> Bool {
        guard pgid > 1 else { return false }
        return kill(-pgid, signal) == 0
    }

    /// True while any process of the group exists.
    public static func groupExists(_ pgid: Int32) -> Bool {
        guard pgid > 1 else { return false }
        return kill(-pgid, 0) == 0 || errno == EPERM
    }

    /// Process groups of the processes whose environment holds exactly `entry` (`NAME=value`), read from /proc.
    /// Lets a restarted daemon find work it started even when it died before recording the PID.
    public static func processGroups(withEnvironmentEntry entry: String) -> Set<Int32> {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let needle = Array(entry.utf8)
        var groups = Set<Int32>()
        for name in names {
            guard let pid = Int32(name), pid != getpid(),
                  let environ = FileManager.default.contents(atPath: "/proc/\(name)/environ") else { continue }
            if environ.split(separator: 0).contains(where: { Array($0) == needle }), let pgid = processGroup(of: pid) {
                groups.insert(pgid)
            }
        }
        return groups
    }

    /// Field 5 of /proc/<pid>/stat: the process group.
    public static func processGroup(of pid: Int32) -> Int32? {
        statField(pid, 5).flatMap { Int32($0) }
    }

    /// Field 22 of /proc/<pid>/stat: the start time in clock ticks after boot.
    public static func startTime(of pid: Int32) -> UInt64? {
        statField(pid, 22).flatMap { UInt64($0) }
    }

    /// Field `n` (numbered from 1, as in proc(5)) of /proc/<pid>/stat. Fields are counted after the command name,
    /// which may itself contain spaces and parentheses.
    static func statField(_ pid: Int32, _ n: Int) -> Substring? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state).
        return fields.count > n - 3 ? fields[n - 3] : nil
    }

    /// Resolves `name` against a PATH value the way execvp would; a name with a slash is taken as it is.
    public static func resolveExecutable(_ name: String, path: String) -> String? {
        if name.contains("/") {
            return access(name, X_OK) == 0 ? name : nil
        }
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
