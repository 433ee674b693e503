import FEMCore
import Foundation

/// The batch script and `sbatch` options of one task: pure functions, unit-tested (SlurmJobScriptTests).
public enum SlurmJobScript {
    /// `value` as one POSIX shell word that nothing in it can change: inside single quotes no character is
    /// special, and a single quote itself is closed, escaped and reopened (`'\''`).
    public static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
    }

    /// The job script: the plan's argv run with exactly `environment` (`env -i`: nothing of the job's own
    /// environment, which Slurm fills with its variables and the user's login environment, reaches the program).
    /// Every item is one quoted word, so the shell that reads the script interprets none of them. The program must
    /// be an absolute path without `=` (env would take it for a variable); the launcher checked it.
    public static func render(taskID: String, argv: [String], environment: [String: String]) -> String {
        var words = ["exec", "/usr/bin/env", "-i", "--"]
        words += environment.sorted { $0.key < $1.key }.map { quote("\($0.key)=\($0.value)") }
        words += argv.map(quote)
        return "#!/bin/sh\n# fem-client task \(taskID.filter { $0.isLetter || $0.isNumber || "-_.".contains($0) })"
            + ": written by the node; every value is single-quoted\n" + words.joined(separator: " ") + "\n"
    }

    /// Resources asked of Slurm: the plan's, capped by the node's limits (cpus rounded up to whole CPUs).
    public struct Request: Sendable, Equatable {
        public var cpus: Int
        public var memoryMB: Int
        public var gpus: Int
        /// Slurm's `--time` in minutes: the task's timeout rounded up, plus a minute, so that the node's own timeout
        /// (which stops the job with scancel) comes first; Slurm's limit is the backstop.
        public var minutes: Int?

        public init(cpus: Int, memoryMB: Int, gpus: Int, minutes: Int?) {
            self.cpus = cpus
            self.memoryMB = memoryMB
            self.gpus = gpus
            self.minutes = minutes
        }
    }

    public static func request(_ plan: ToolPlan, timeoutSeconds: Int?, maxCPUs: Int, defaultMemoryMB: Int,
                               maxMemoryMB: Int) -> Request {
        let cpus = min(max(1, Int((plan.resources.cpus ?? 1).rounded(.up))), maxCPUs)
        let memory = min(max(1, plan.resources.memoryMB ?? defaultMemoryMB), maxMemoryMB)
        let minutes = timeoutSeconds.map { ($0 + 59) / 60 + 1 }
        return Request(cpus: cpus, memoryMB: memory, gpus: max(0, plan.resources.gpus ?? 0), minutes: minutes)
    }

    /// The `sbatch` arguments (the script path last). `--export=NONE`: nothing of the daemon's environment goes
    /// with the job; `--no-requeue`: Slurm never runs the job a second time.
    public static func sbatchArguments(nodeID: String, taskID: String, script: String, workingDirectory: String, stdout: String,
                                       stderr: String, request: Request, partition: String?, account: String?,
                                       qos: String?, user: (uid: UInt32, gid: UInt32)?) -> [String] {
        var args = ["--parsable", "--job-name=\(jobName(nodeID: nodeID, taskID: taskID))",
                    "--comment=\(comment(nodeID: nodeID, taskID: taskID))",
                    "--chdir=\(workingDirectory)", "--output=\(stdout)", "--error=\(stderr)", "--export=NONE",
                    "--no-requeue", "--nodes=1", "--ntasks=1", "--cpus-per-task=\(request.cpus)",
                    "--mem=\(request.memoryMB)M"]
        if request.gpus > 0 { args.append("--gres=gpu:\(request.gpus)") }
        if let m = request.minutes { args.append("--time=\(m)") }
        if let partition, !partition.isEmpty { args.append("--partition=\(partition)") }
        if let account, !account.isEmpty { args.append("--account=\(account)") }
        if let qos, !qos.isEmpty { args.append("--qos=\(qos)") }
        if let user { args += ["--uid=\(user.uid)", "--gid=\(user.gid)"] }
        args.append(script)
        return args
    }

    /// The job's name and its comment: `fem-task:<node>:<task>`, so a node finds only its own job for a task
    /// (a task sent to `all` has a job per node).
    public static func jobName(nodeID: String, taskID: String) -> String { "fem-task:\(nodeID):\(taskID)" }
    public static func comment(nodeID: String, taskID: String) -> String { jobName(nodeID: nodeID, taskID: taskID) }

    /// The job ids in `squeue --format='%i %k'` output whose comment is exactly `comment`.
    public static func jobIDs(inSqueue output: String, comment: String) -> [String] {
        output.split(whereSeparator: \.isNewline).compactMap { line in
            let words = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard words.count == 2, !words[0].isEmpty, words[0].allSatisfy(\.isNumber),
                  words[1].trimmingCharacters(in: .whitespaces) == comment else { return nil }
            return words[0]
        }
    }

    /// The job id in `sbatch --parsable` output (`<id>` or `<id>;<cluster>`).
    public static func parseJobID(_ output: String) -> String? {
        let first = output.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
        let id = first.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return !id.isEmpty && id.allSatisfy(\.isNumber) ? id : nil
    }
}

/// A job as `scontrol show job -o <id>` describes it (Slurm 22.05 has no `--json` for scontrol; `squeue --json`
/// ignores `-j`, and `sacct` needs slurmdbd).
public struct SlurmJobInfo: Sendable, Equatable {
    public var state: String
    public var reason: String
    /// `ExitCode=<code>:<signal>`.
    public var exitCode: Int32
    public var signal: Int32

    /// The fields of one `scontrol show job -o` line; nil when the line is not a job.
    public static func parse(_ line: String) -> SlurmJobInfo? {
        var fields: [String: String] = [:]
        for word in line.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = word.firstIndex(of: "=") else { continue }
            let key = String(word[..<eq])
            if fields[key] == nil { fields[key] = String(word[word.index(after: eq)...]) }
        }
        guard fields["JobId"] != nil, let state = fields["JobState"] else { return nil }
        let codes = (fields["ExitCode"] ?? "0:0").split(separator: ":").map { Int32($0) ?? 0 }
        return SlurmJobInfo(state: state, reason: fields["Reason"] ?? "None", exitCode: codes.first ?? 0,
                            signal: codes.count > 1 ? codes[1] : 0)
    }

    /// The jobs in `squeue -h --format=%i|%T|%r` output (id, state, reason), by id. squeue has no exit code: these
    /// are read for the phase of a job that has not ended.
    public static func parse(squeue output: String) -> [String: SlurmJobInfo] {
        var jobs: [String: SlurmJobInfo] = [:]
        for line in output.split(whereSeparator: \.isNewline) {
            let f = line.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard f.count == 3, !f[0].isEmpty, f[0].allSatisfy(\.isNumber), !f[1].isEmpty else { continue }
            jobs[f[0]] = SlurmJobInfo(state: f[1], reason: f[2].isEmpty ? "None" : f[2], exitCode: 0, signal: 0)
        }
        return jobs
    }

    public enum Phase: Sendable, Equatable {
        /// Waiting for resources (Slurm's reason says why).
        case pending(String)
        case running
        /// Ended, and how.
        case ended(LaunchOutcome)
    }

    /// What the job's state means for the task.
    public var phase: Phase {
        switch state {
        case "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED":
            return .pending(reason)
        case "RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED":
            return .running
        case "COMPLETED":
            return .ended(LaunchOutcome(exitCode: exitCode))
        case "OUT_OF_MEMORY":
            return .ended(LaunchOutcome(exitCode: exitCode, signal: nil, outOfMemory: true,
                                        message: "Slurm killed the job for exceeding its memory limit (OUT_OF_MEMORY)"))
        case "TIMEOUT":
            return .ended(LaunchOutcome(exitCode: exitCode, message: "Slurm ended the job at its time limit (TIMEOUT)",
                                        failureClass: .timeout))
        case "NODE_FAIL":
            return .ended(LaunchOutcome(exitCode: exitCode, message: "the cluster node running the job failed (NODE_FAIL)",
                                        failureClass: .nodeFailure))
        case "PREEMPTED":
            return .ended(LaunchOutcome(exitCode: exitCode, message: "Slurm preempted the job (PREEMPTED)",
                                        failureClass: .preempted))
        case "CANCELLED", "DEADLINE", "REVOKED":
            return .ended(LaunchOutcome(exitCode: exitCode == 0 ? 128 + (signal == 0 ? 15 : signal) : exitCode,
                                        signal: signal == 0 ? 15 : signal,
                                        message: "the job was \(state.lowercased()) in Slurm"))
        case "BOOT_FAIL", "LAUNCH_FAILED":
            return .ended(LaunchOutcome(exitCode: nil, message: "Slurm could not start the job (\(state), \(reason))",
                                        failureClass: .runnerSystemFailure))
        default:  // FAILED, and states a later Slurm adds
            if signal != 0 {
                return .ended(LaunchOutcome(exitCode: 128 + signal, signal: signal,
                                            message: "killed by signal \(signal) (Slurm: \(state), \(reason))"))
            }
            // A job that did not complete never reads as a success, whatever exit code Slurm recorded.
            return .ended(LaunchOutcome(exitCode: exitCode == 0 ? 1 : exitCode,
                                        message: exitCode == 0 ? "the job ended \(state) (\(reason))" : nil))
        }
    }
}
