import FEMCore
import Testing

@Suite
struct ReporterProtocolTests {
    @Test(arguments: [
        (#"{"type": "info", "info": "Finished"}"#, ReportMessage.info("Finished")),
        (#"  {"type":"print","message":"hello"}  "#, .print("hello")),
        (#"{"type": "error", "exception": "ValueError: x"}"#, .error("ValueError: x")),
        (#"{"type": "error"}"#, .error("the tool reported an error")),
        (#"{"type": "trigger", "trigger_name": "n", "trigger_arguments": "a b"}"#, .trigger(name: "n", arguments: "a b")),
        (#"{"type": "trigger", "trigger_name": "n"}"#, .trigger(name: "n", arguments: "")),
        (#"{"type": "model", "round": 2, "metrics": {"loss": 0.5}}"#, .model(round: 2, metrics: ["loss": .double(0.5)])),
        (#"{"type": "model", "round": "3", "acc": "0.9"}"#, .model(round: 3, metrics: ["acc": .double(0.9)])),
    ])
    func messages(line: String, expected: ReportMessage) {
        #expect(ReportMessage.parse(line) == expected)
    }

    @Test(arguments: [
        "plain text", "", "{", #"{"type": "model", "round": 1"#, #"["type", "info"]"#, #"{"type": "nope"}"#,
        #"{"info": "Finished"}"#, #"{"type": 5}"#, #"{"type": "trigger"}"#, "{\"type\": \"info\", \"info\": \"\u{0}\"",
    ])
    func ordinaryLines(line: String) {
        #expect(ReportMessage.parse(line) == nil)
    }

    @Test func oversizedLinesAreOrdinary() {
        let big = #"{"type": "print", "message": ""# + String(repeating: "x", count: 70_000) + #""}"#
        #expect(ReportMessage.parse(big) == nil)
        #expect(ReportMessage.info("Finished").isFinished && !ReportMessage.info("finished").isFinished)
    }
}
