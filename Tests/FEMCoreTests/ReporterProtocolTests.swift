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

    @Test func aLineJustOver4KiBIsOrdinary() {
        let line = #"{"type": "print", "message": ""# + String(repeating: "x", count: 4096) + #""}"#
        #expect(ReportMessage.parse(line) == nil)
    }

    @Test func toolTextIsCutOnACharacterBoundaryWithoutControlCharacters() {
        #expect(ToolText.clean("a\u{1B}[2Jb\r\nc\u{202E}d\u{9B}e", maxBytes: 100) == "a[2Jb  cde")
        let cut = ToolText.clean(String(repeating: "é", count: 600), maxBytes: 1024)
        #expect(cut.utf8.count <= 1024 + 3 && cut.hasSuffix("…") && cut.hasPrefix("éé"))
        #expect(ToolText.isPlainName("loss_2.val-x") && !ToolText.isPlainName("") && !ToolText.isPlainName("a b")
                && !ToolText.isPlainName(String(repeating: "a", count: 65)) && !ToolText.isPlainName("ünï"))
    }

    @Test func metricsAreScreened() {
        let metrics: [String: JSONValue] = ["acc": .double(0.9), "n": .int(3), "tag": .string("short"),
                                            "blob": .string(String(repeating: "x", count: 65)), "bad name": .int(1),
                                            "obj": .object([:]), "flag": .bool(true)]
        let open = ToolText.screen(metrics, maxCount: 32, numbersOnly: false)
        #expect(open.kept == ["acc": .double(0.9), "n": .int(3), "tag": .string("short")])
        #expect(open.dropped.count == 4)
        let held = ToolText.screen(metrics, maxCount: 32, numbersOnly: true)
        #expect(held.kept == ["acc": .double(0.9), "n": .int(3)])
        let few = ToolText.screen(metrics, maxCount: 1, numbersOnly: true)
        #expect(few.kept == ["acc": .double(0.9)] && few.dropped.contains { $0.hasPrefix("n (over 1 metrics") })
    }
}

