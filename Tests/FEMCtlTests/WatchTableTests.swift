@testable import FEMCtl
import FEMCore
import Foundation
import Testing

/// `femctl watch`'s table: a header, and columns that stay aligned for every state (awaiting_approval is the widest)
/// and every event kind (the kind goes to DETAIL, not into STATE).
struct WatchTableTests {
    @Test func everyStateFitsItsColumn() throws {
        let header = WatchTable.header
        let stateColumn = try #require(header.range(of: "STATE")).lowerBound
        let seqColumn = try #require(header.range(of: "SEQ")).lowerBound
        let table = WatchTable()
        for state in TaskState.allCases {
            for kind in [EventKind.state, .progress] {
                let e = TaskEvent(kind: kind, nodeID: "hospital-a", taskID: UUID().uuidString.lowercased(),
                                  executionID: "exec-1", state: state, seq: 12, time: Date(),
                                  detail: EventDetail(message: "m"))
                let line = table.line(e)
                let at = line.index(line.startIndex, offsetBy: header.distance(from: header.startIndex, to: seqColumn))
                #expect(line[at...].hasPrefix("12 "), "\(state)/\(kind): \(line)")
                let stateAt = line.index(line.startIndex, offsetBy: header.distance(from: header.startIndex, to: stateColumn))
                #expect(line[stateAt...].hasPrefix(state.rawValue + " "), "\(line)")
                if kind != .state { #expect(line.contains("[\(kind.rawValue)] m"), "\(line)") }
            }
        }
    }
}
