import FEMCore
import Foundation

/// The job script of a plan that names an image, where `launchers.slurm.container_runtime = "podman"`: rootless
/// `podman run` as the job's user, with the docker launcher's locked-down settings. Pure, unit-tested.
///
/// - Storage: a fresh folder in the compute node's /tmp per job (`mktemp`, 0700, removed when the script ends):
///   podman's overlay storage (`--root`, native rootless overlay: Linux 5.13 or later; podman's default vfs
///   here made the image's root folder 0700, unreadable to a non-root user) needs a local filesystem, and its runroot must be a short path. The image is
///   pulled into it from the registry the plan names (which the node's allowlist admitted; a digest in the reference
///   is verified by podman); nothing is shared between jobs or users.
/// - `--userns=keep-id --user <uid>:<gid>`: the container runs as the job's (non-root) user, so the files it writes
///   to `out/` are that user's, as for host processes, and the sandbox is taken back the same way.
/// - `--init` (catatonit as the container's PID 1): the program is not its namespace's init, so Slurm's SIGTERM at a
///   cancel or timeout ends it (an init without a handler ignores it), podman returns and the script cleans up
///   before Slurm's KillWait runs out.
/// - `--network=none`, `--cap-drop=ALL`, `--security-opt=no-new-privileges`, `--read-only` (no tmpfs of podman's
///   own on /run and /var/tmp) with a tmpfs `/tmp`, `--ulimit nproc` (RLIMIT_NPROC, counted per user namespace).
/// - Limits: rootless podman on cgroup v1 sets no limits of its own, so `--memory`, `--cpus` and `--pids-limit` would
///   be ignored (podman says so on stderr). runc makes the container's cgroup below the job's task cgroup (which
///   Slurm gives the job's user), where Slurm's `--mem` and `--cpus-per-task` hold it (task/cgroup). On v1 the
///   kernel counts a memory kill only in the container's cgroup, so Slurm records FAILED with exit 137 rather than
///   OUT_OF_MEMORY; the script then says on stderr that the job's memory limit was reached. `--cgroups=disabled`
///   (which would keep the container in Slurm's cgroup) needs crun, which refuses a hybrid v1/v2 hierarchy.
///   `--pids-limit` is added where the compute node has cgroup v2.
/// - The sandbox's `src/`, `in/` (read-only), `out/` (writable) and the datasets (read-only) are bind-mounted at
///   their host paths, which are the paths the command was rendered with; `logs/` (the job script, the environment
///   file) is not mounted.
/// - The plan's environment goes in a file (`--env-file`, made by the node, readable only by the job's user), never
///   on podman's command line, which every user of the compute node can read.
public enum SlurmContainerScript {
    public struct Mount: Sendable, Equatable {
        public var path: String
        public var writable: Bool

        public init(path: String, writable: Bool) {
            self.path = path
            self.writable = writable
        }
    }

    public struct Container: Sendable, Equatable {
        public var podman: String
        public var image: String
        public var argv: [String]
        public var workingDirectory: String
        public var mounts: [Mount]
        public var envFile: String
        public var registriesConf: String
        public var uid: UInt32
        public var gid: UInt32
        public var pidsLimit: Int
        public var tmpfsMB: Int

        public init(podman: String, image: String, argv: [String], workingDirectory: String, mounts: [Mount],
                    envFile: String, registriesConf: String, uid: UInt32, gid: UInt32, pidsLimit: Int, tmpfsMB: Int) {
            self.podman = podman
            self.image = image
            self.argv = argv
            self.workingDirectory = workingDirectory
            self.mounts = mounts
            self.envFile = envFile
            self.registriesConf = registriesConf
            self.uid = uid
            self.gid = gid
            self.pidsLimit = pidsLimit
            self.tmpfsMB = tmpfsMB
        }
    }

    /// The registry of an image reference: `127.0.0.1:5000/fem/x:1` → `127.0.0.1:5000`, `library/busybox` →
    /// `docker.io` (Docker's rule: a first component with `.` or `:`, or `localhost`, is a registry).
    public static func registryHost(_ image: String) -> String {
        guard let slash = image.firstIndex(of: "/") else { return "docker.io" }
        let first = String(image[..<slash])
        return first.contains(".") || first.contains(":") || first == "localhost" ? first : "docker.io"
    }

    /// The reference with its registry spelled out, as dockerd reads it (`busybox:1` → `docker.io/library/busybox:1`):
    /// podman then asks no search list which registry is meant.
    public static func qualified(_ image: String) -> String {
        let slash = image.firstIndex(of: "/")
        if let slash {
            let first = String(image[..<slash])
            if first.contains(".") || first.contains(":") || first == "localhost" { return image }
            return "docker.io/" + image
        }
        return "docker.io/library/" + image
    }

    /// Why an image reference cannot go to podman, or nil: nothing a command line or a config reads specially.
    public static func imageProblem(_ image: String) -> String? {
        let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")
        if image.isEmpty || image.hasPrefix("-") || image.unicodeScalars.contains(where: { !allowed.contains($0) }) {
            return "image \"\(image)\" is not an image reference (letters, digits, . _ - / : @)"
        }
        return nil
    }

    /// The `--env-file` text (`KEY=value` lines); nil when a value holds a line break, which the format cannot carry.
    public static func envFile(_ environment: [String: String]) -> String? {
        var text = ""
        for (key, value) in environment.sorted(by: { $0.key < $1.key }) {
            if value.contains(where: { $0 == "\n" || $0 == "\r" }) || key.contains("=") { return nil }
            text += "\(key)=\(value)\n"
        }
        return text
    }

    /// podman's registries.conf for the job: no search list (references are qualified), and the node's insecure
    /// (plain HTTP) registries.
    public static func registriesConf(insecure: [String]) -> String {
        var text = "# written by fem-client for its Slurm jobs' podman\nunqualified-search-registries = []\n"
        for host in insecure {
            text += "\n[[registry]]\nlocation = \"\(host.filter { $0 != "\"" && $0 != "\\" })\"\ninsecure = true\n"
        }
        return text
    }

    public static func render(taskID: String, container c: Container) -> String {
        let q = SlurmJobScript.quote
        let entrypoint = (try? JSONSerialization.data(withJSONObject: Array(c.argv.prefix(1)),
                                                      options: [.withoutEscapingSlashes]))
            .map { String(decoding: $0, as: UTF8.self) } ?? "[]"
        var run = ["p", "run", "--rm", "--pull=never", "--init", "--network=none", "--cap-drop=ALL",
                   "--security-opt=no-new-privileges", "--read-only", "--read-only-tmpfs=false",
                   "--tmpfs", q("/tmp:rw,nosuid,nodev,size=\(c.tmpfsMB)m"),
                   "--userns=keep-id", "--user", q("\(c.uid):\(c.gid)"),
                   "--ulimit", q("nproc=\(c.pidsLimit):\(c.pidsLimit)"), "$pids",
                   "--env-file", q(c.envFile)]
        for m in c.mounts {
            run += ["--mount", q("type=bind,source=\(m.path),destination=\(m.path)" + (m.writable ? "" : ",ro=true"))]
        }
        run += ["--workdir", q(c.workingDirectory), "--entrypoint", q(entrypoint), q(c.image)]
        run += c.argv.dropFirst().map(q)
        let id = taskID.filter { $0.isLetter || $0.isNumber || "-_.".contains($0) }
        return """
            #!/bin/sh
            # fem-client task \(id): written by the node; every value is single-quoted
            # A container run by rootless podman as the job's user (see SlurmContainerScript).
            umask 077
            d=$(/usr/bin/mktemp -d /tmp/fem-podman.XXXXXX) || { echo 'fem-client: cannot make a folder for podman in /tmp' >&2; exit 125; }
            p() {
              /usr/bin/env -i PATH=/usr/bin:/bin HOME="$d" XDG_RUNTIME_DIR="$d/run" XDG_CONFIG_HOME="$d/config" \\
                XDG_DATA_HOME="$d/data" CONTAINERS_REGISTRIES_CONF=\(q(c.registriesConf)) \\
                \(q(c.podman)) --log-level=error --storage-driver=overlay --root "$d/storage" --runroot "$d/run" "$@"
            }
            # The container (if a signal cut its --rm short) is removed, then the storage and runroot, which hold files of
            # the user's subordinate ids, from inside its user namespace.
            trap 'p rm --all --force --time 0 >/dev/null 2>&1; p unshare rm -rf "$d/storage" "$d/run" >/dev/null 2>&1; rm -rf "$d"' EXIT
            trap 'exit 143' TERM INT
            mkdir -m 700 "$d/run" || exit 125
            p pull --quiet \(q(c.image)) >/dev/null || { echo 'fem-client: podman could not pull the image '\(q(c.image)) >&2; exit 125; }
            # Rootless podman holds a PIDs limit only on cgroup v2; on v1 the job's cgroup (Slurm) and nproc hold it.
            pids=''
            [ -f /sys/fs/cgroup/cgroup.controllers ] && pids=\(q("--pids-limit=\(c.pidsLimit)"))
            # In the background, with Slurm's SIGTERM (cancel, time limit) passed on: Slurm signals the job's shell, not
            # podman, which would otherwise keep the container running until KillWait's SIGKILL, leaving no time to
            # clean up. podman hands the signal to the container.
            # shellcheck disable=SC2086 # $pids is one word or none
            \(run.joined(separator: " ")) &
            pid=$!
            trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
            wait "$pid"
            rc=$?
            while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
            # A kill at the job's memory limit (Slurm's cgroup) is counted, on cgroup v1, only in the container's own
            # cgroup, which is gone: Slurm then reports FAILED with exit 137, not OUT_OF_MEMORY. Said here instead.
            if [ "$rc" -eq 137 ]; then
              cg=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
              while case "$cg" in */job_*) true ;; *) false ;; esac; do
                if [ "$(cat "/sys/fs/cgroup/memory$cg/memory.failcnt" 2>/dev/null || echo 0)" != 0 ]; then
                  echo 'fem-client: the container was killed (SIGKILL) when the job reached its memory limit (Slurm --mem)' >&2
                  break
                fi
                cg=${cg%/*}
              done
            fi
            exit $rc

            """
    }
}
