import Foundation

/// The tool-originated events of one task so far, against the node's caps, and the tool text the airlock holds.
final class EventBudget: @unchecked Sendable {
    enum Verdict { case send, sendCapNotice, logOnly }
    private let lock = NSLock()
    private let limits: ReporterLimits
    private var count = 0
    private var bytes = 0
    private var capped = false
    private var held = ""
    private var heldFull = false

    init(_ limits: ReporterLimits) { self.limits = limits }

    /// After a daemon restart: what the task's tool already caused (and held), from the journal, so re-attaching
    /// does not reset the caps or drop the held text.
    func seed(history: [TaskEvent], held text: String?) {
        lock.withLock {
            for e in history where e.kind == .progress || e.kind == .notice {
                guard let d = e.detail.data else { continue }
                if d["cap_reached"] != nil {
                    capped = true
                    continue
                }
                guard d["round"] != nil || d["finished"] != nil || d["trigger"] != nil || d["link"] != nil else { continue }
                count += 1
                bytes += (e.detail.message?.utf8.count ?? 0) + JSONValue.object(d).encoded().count
            }
            if let text { held = text }
        }
    }

    /// Whether an event of `size` bytes may go out; the first refusal comes with one notice saying so.
    func admit(size: Int) -> Verdict {
        lock.withLock {
            if capped { return .logOnly }
            if count + 1 > limits.maxEventsPerTask || bytes + size > limits.maxEventBytesPerTask {
                capped = true
                return .sendCapNotice
            }
            count += 1
            bytes += size
            return .send
        }
    }

    /// Adds a line of held text; nil when nothing changed (the held text is full). Returns the whole text to journal.
    func hold(_ line: String) -> String? {
        lock.withLock {
            if heldFull { return nil }
            let entry = line + "\n"
            if held.utf8.count + entry.utf8.count > ToolText.maxHeldBytes {
                heldFull = true
                held += "[more tool text was cut; the task's logs/stdout.log holds all of it]\n"
            } else {
                held += entry
            }
            return held
        }
    }
}
