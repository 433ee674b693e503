import Foundation
import Synchronization

/// The tool-originated events of one task so far, against the node's caps, and the tool text the airlock holds.
final class EventBudget: Sendable {
    enum Verdict { case send, sendCapNotice, logOnly }
    private struct State {
        var count = 0
        var bytes = 0
        var capped = false
        var held = ""
        var heldFull = false
    }
    private let state = Mutex(State())
    private let limits: ReporterLimits

    init(_ limits: ReporterLimits) { self.limits = limits }

    /// After a daemon restart: what the task's tool already caused (and held), from the journal, so re-attaching
    /// does not reset the caps or drop the held text.
    func seed(history: [TaskEvent], held text: String?) {
        state.withLock { s in
            for e in history where e.kind == .progress || e.kind == .notice {
                guard let d = e.detail.data else { continue }
                if d["cap_reached"] != nil {
                    s.capped = true
                    continue
                }
                guard d["round"] != nil || d["finished"] != nil || d["trigger"] != nil || d["link"] != nil else { continue }
                s.count += 1
                s.bytes += (e.detail.message?.utf8.count ?? 0) + JSONValue.object(d).encoded().count
            }
            if let text { s.held = text }
        }
    }

    /// Whether an event of `size` bytes may go out; the first refusal comes with one notice saying so.
    func admit(size: Int) -> Verdict {
        state.withLock { s in
            if s.capped { return .logOnly }
            if s.count + 1 > limits.maxEventsPerTask || s.bytes + size > limits.maxEventBytesPerTask {
                s.capped = true
                return .sendCapNotice
            }
            s.count += 1
            s.bytes += size
            return .send
        }
    }

    /// Adds a line of held text; nil when nothing changed (the held text is full). Returns the whole text to journal.
    func hold(_ line: String) -> String? {
        state.withLock { s in
            if s.heldFull { return nil }
            let entry = line + "\n"
            if s.held.utf8.count + entry.utf8.count > ToolText.maxHeldBytes {
                s.heldFull = true
                s.held += "[more tool text was cut; the task's logs/stdout.log holds all of it]\n"
            } else {
                s.held += entry
            }
            return s.held
        }
    }
}
