import ArgumentParser
import FEMCore
import FEMJournal
import Foundation

extension FEMClientCommand {
    /// `fem-client stats`: per tool, how its tasks ended and how long each step took (p50/p95), from the journal.
    struct Stats: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per tool: tasks by outcome and the p50/p95 of each step (queued, stage-in, run, stage-out).")
        @OptionGroup var options: ConfigOption
        @Option(help: ArgumentHelp(Self.sinceHelp)) var since: String?
        static let sinceHelp = "Only tasks that ended since then: a duration back from now (90s, 30m, 12h, 7d) or "
            + "a date (2026-11-29 or 2026-11-29T10:00:00Z)."
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            let from = try since.map { try StatsReport.parseSince($0, now: Date()) }
            let journal = try SQLiteJournal(path: config.journalPath, nodeID: config.nodeID)
            let terminal = Set(TaskState.allCases.filter(\.isTerminal))
            var report = StatsReport()
            for rec in try journal.tasks(states: terminal, limit: 10_000_000) {
                if let from, rec.updatedAt < from { continue }
                let history = (try? journal.history(rec.taskID)) ?? []
                let entered = Set(history.filter { $0.kind == .state }.map(\.state))
                report.add(tool: TaskView.tool(rec), state: rec.state, failureClass: rec.failureClass,
                           timings: TaskView.timings(rec, history: history, now: Date()),
                           entered: history.isEmpty ? nil : entered)
            }
            if json {
                var o = report.json.objectValue ?? [:]
                o["since"] = from.map { .string(FEMTime.format($0)) } ?? .null
                print(String(decoding: JSONValue.object(o).encoded(), as: UTF8.self))
            } else {
                print(report.table(since: from))
            }
        }
    }
}

/// Counts and step times per tool.
struct StatsReport {
    struct Tool {
        var outcomes: [String: Int] = [:]
        var failureClasses: [String: Int] = [:]
        var steps: [String: [Int64]] = [:]
        var tasks: Int { outcomes.values.reduce(0, +) }
    }

    static let steps = ["queued_ms", "stage_in_ms", "run_ms", "stage_out_ms", "approval_ms"]
    static let outcomes = ["completed", "failed", "cancelled", "declined"]
    var tools: [String: Tool] = [:]

    /// `entered`: the states the task was in (nil: unknown); a step it never reached (a declined task's run) does
    /// not count as a 0 in that step's percentiles.
    mutating func add(tool: String, state: TaskState, failureClass: FailureClass?, timings: TaskTimings,
                      entered: Set<TaskState>? = nil) {
        var t = tools[tool] ?? Tool()
        t.outcomes[state.rawValue, default: 0] += 1
        if let failureClass { t.failureClasses[failureClass.rawValue, default: 0] += 1 }
        func reached(_ s: TaskState, _ v: Int64) -> Int64? { entered.map { $0.contains(s) } ?? true ? v : nil }
        let values: [String: Int64?] = ["queued_ms": timings.queuedMS,
                                        "stage_in_ms": reached(.stagingIn, timings.stageInMS),
                                        "run_ms": reached(.running, timings.runMS),
                                        "stage_out_ms": reached(.stagingOut, timings.stageOutMS),
                                        "approval_ms": timings.approvalMS]
        for (step, v) in values { if let v { t.steps[step, default: []].append(v) } }
        tools[tool] = t
    }

    /// Nearest rank: the smallest value with at least `p` of all values at or below it.
    static func percentile(_ values: [Int64], _ p: Double) -> Int64? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let rank = Int((p * Double(sorted.count)).rounded(.up))
        return sorted[max(0, min(sorted.count - 1, rank - 1))]
    }

    var json: JSONValue {
        let list: [JSONValue] = tools.keys.sorted().map { name in
            let t = tools[name] ?? Tool()
            var steps: [String: JSONValue] = [:]
            for step in Self.steps {
                guard let v = t.steps[step], let p50 = Self.percentile(v, 0.5), let p95 = Self.percentile(v, 0.95)
                else { continue }
                steps[step] = .object(["p50": .int(p50), "p95": .int(p95), "count": .int(Int64(v.count))])
            }
            return .object(["tool": .string(name), "tasks": .int(Int64(t.tasks)),
                            "outcomes": .object(t.outcomes.mapValues { .int(Int64($0)) }),
                            "failure_classes": .object(t.failureClasses.mapValues { .int(Int64($0)) }),
                            "steps": .object(steps)])
        }
        return .object(["tools": .array(list)])
    }

    func table(since: Date?) -> String {
        var lines = ["tasks that ended " + (since.map { "since \(FEMTime.format($0))" } ?? "(all in the journal)")]
        let pad = TaskView.pad
        lines.append(pad("TOOL", 24) + pad("TASKS", 7) + Self.outcomes.map { pad($0.uppercased(), 10) }.joined()
                     + pad("QUEUED p50/p95", 18) + pad("STAGE-IN p50/p95", 18) + pad("RUN p50/p95", 18)
                     + "STAGE-OUT p50/p95")
        for name in tools.keys.sorted() {
            let t = tools[name] ?? Tool()
            func step(_ s: String) -> String {
                guard let v = t.steps[s], let p50 = Self.percentile(v, 0.5), let p95 = Self.percentile(v, 0.95)
                else { return "-" }
                return "\(TaskTimings.seconds(p50))/\(TaskTimings.seconds(p95))"
            }
            lines.append(pad(TextEscaping.escaped(name), 24) + pad("\(t.tasks)", 7)
                         + Self.outcomes.map { pad("\(t.outcomes[$0] ?? 0)", 10) }.joined()
                         + pad(step("queued_ms"), 18) + pad(step("stage_in_ms"), 18) + pad(step("run_ms"), 18)
                         + step("stage_out_ms"))
            if !t.failureClasses.isEmpty {
                lines.append("    failures: " + t.failureClasses.sorted { $0.key < $1.key }
                    .map { "\($0.key)=\($0.value)" }.joined(separator: " "))
            }
        }
        if tools.isEmpty { lines.append("(no task ended in that time)") }
        return lines.joined(separator: "\n")
    }

    /// `90s`, `30m`, `12h`, `7d` back from `now`, or a date (`2026-11-29`, `2026-11-29T10:00:00Z`).
    static func parseSince(_ text: String, now: Date) throws -> Date {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]
        if let unit = text.last, let seconds = units[unit], let n = Int(text.dropLast()), n >= 0, n <= 100_000_000 {
            return now.addingTimeInterval(-Double(n) * seconds)
        }
        if let d = FEMTime.parse(text) { return d }
        if let d = FEMTime.parse(text + "T00:00:00Z") { return d }
        throw ValidationError("--since: \"\(TextEscaping.escaped(text))\" is neither a duration (90s, 30m, 12h, 7d, 2w) "
                              + "nor a date (2026-11-29 or 2026-11-29T10:00:00Z)")
    }
}
