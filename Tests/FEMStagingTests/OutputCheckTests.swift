@testable import FEMCore
@testable import FEMStaging
import Foundation
import Testing

/// The table reader and the two built-in output checks, over outputs held in memory.
struct OutputCheckTests {
    func records(_ text: String, tabs: Bool = false) throws -> [[String]] {
        try TableReader.records(Array(text.utf8), tabs: tabs).map(\.fields)
    }

    func output(_ path: String, _ text: String, kind: OutputKind? = nil, countColumns: [String] = []) -> CheckedOutput {
        CheckedOutput(path: path, rule: OutputRule(pattern: "*", maxBytes: nil, kind: kind, countColumns: countColumns),
                      contents: Array(text.utf8))
    }

    func output(_ path: String, bytes: [UInt8], kind: OutputKind? = nil) -> CheckedOutput {
        CheckedOutput(path: path, rule: OutputRule(pattern: "*", maxBytes: nil, kind: kind), contents: bytes)
    }

    var settings: OutputCheckSettings { OutputCheckSettings() }

    // MARK: - The table reader

    @Test func csvQuotesEmbeddedSeparatorsAndLineBreaks() throws {
        let text = "name,n\r\n\"Smith, J\",3\n\"say \"\"hi\"\"\",4\n\"two\nlines\",5\n"
        let rs = try TableReader.records(Array(text.utf8))
        #expect(rs.map(\.fields) == [["name", "n"], ["Smith, J", "3"], ["say \"hi\"", "4"], ["two\nlines", "5"]])
        // Each record starts on its line; the quoted line break moves the next record down one line.
        #expect(rs.map(\.line) == [1, 2, 3, 4])
        let after = try TableReader.records(Array("a\n\"x\ny\",1\nlast,2".utf8))
        #expect(after.map(\.line) == [1, 2, 4])
        #expect(after.last?.fields == ["last", "2"])  // no line break at the end
    }

    @Test func crlfAndLoneCRAreOneLineBreakEach() throws {
        let rs = try TableReader.records(Array("a,b\r\n1,2\r3,4\r\n".utf8))
        #expect(rs.map(\.fields) == [["a", "b"], ["1", "2"], ["3", "4"]])
        #expect(rs.map(\.line) == [1, 2, 3])
    }

    @Test func tsvSplitsOnTabsOnly() throws {
        #expect(try records("a\tb,c\n1\t2,3\n", tabs: true) == [["a", "b,c"], ["1", "2,3"]])
    }

    @Test func raggedRowsAreReadAsTheyAre() throws {
        #expect(try records("a,b,c\n1,2\n1,2,3,4\n") == [["a", "b", "c"], ["1", "2"], ["1", "2", "3", "4"]])
    }

    @Test func brokenTablesNameTheLine() throws {
        #expect(throws: TableReader.Problem.unterminatedQuote(line: 2)) { try records("a,b\n\"open,1\n2,3\n") }
        #expect(throws: TableReader.Problem.textAfterQuote(line: 2)) { try records("a,b\n\"x\"y,1\n") }
        #expect(throws: TableReader.Problem.notUTF8(line: 3)) {
            try TableReader.records(Array("a,b\n1,2\n".utf8) + [0xFF, 0x2C, 0x31, 0x0A])
        }
        var reader = TableReader(tabs: false)
        reader.maxFieldBytes = 8
        #expect(throws: TableReader.Problem.fieldTooLong(line: 1, limit: 8)) {
            try reader.feed(Array("0123456789".utf8)) { _ in }
        }
    }

    @Test func aRecordIsBoundedInAll() throws {
        var reader = TableReader(tabs: false)
        reader.maxRecordBytes = 10
        #expect(throws: TableReader.Problem.recordTooLong(line: 2, limit: 10)) {
            try reader.feed(Array("a\n1234,5678,90ab\n".utf8)) { _ in }
        }
    }

    @Test func longColumnNamesAreShortenedInFindings() throws {
        let name = "n_" + String(repeating: "x", count: 5000)
        let found = try MinCellCountCheck().check(output("out/t.csv", "\(name)\n4\n"), settings: settings)
        let kept = try #require(found.first?.columnName)
        #expect(kept.utf8.count <= 256 && kept.hasSuffix("…") && kept.hasPrefix("n_xxx"))
    }

    @Test func aFileThatCannotBeReadIsAFindingWhosePathStaysOnTheNode() throws {
        let plan = try DocumentReader.readPlan(["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                                "command": ["base": ["/bin/true"]], "outputs": [["pattern": "*"]]])
        let gone = CollectedFile(source: "/nonexistent/staging/secret-name.csv", path: "out/secret-name.csv", size: 1,
                                 sha256: "")
        let found = OutputChecks.run([gone], plan: plan, settings: settings)
        #expect(found.count == 2 && found.allSatisfy { $0.message.hasPrefix("could not be checked: ") }, "\(found)")
        let sent = OutputChecks.eventForm(found, files: [gone], plan: plan, pathsLeave: false)
        let text = String(decoding: try JSONEncoder().encode(sent), as: UTF8.self)
        #expect(!text.contains("secret-name"), "\(text)")
    }

    @Test func readingIsBoundedAndABoundedReadIsAFinding() throws {
        var s = settings
        s.maxScanBytes = 8
        let csv = "n\n12\n13\n2\n"  // the 2 is past the bound
        let counted = try MinCellCountCheck().check(output("out/t.csv", csv), settings: s)
        #expect(counted.map(\.message) == ["only the first 8 bytes were checked: the file is larger"])
        s.minCellCount = 0
        let typed = try FileTypeCheck().check(output("out/t.csv", csv), settings: s)
        #expect(typed.map(\.message) == ["only the first 8 bytes were checked: the file is larger"])
        let text = try FileTypeCheck().check(output("out/t.txt", bytes: Array("abcdefghij".utf8) + [0xFF], kind: .text),
                                             settings: s)
        #expect(text.map(\.message) == ["only the first 8 bytes were checked: the file is larger"])
        let json = try FileTypeCheck().check(output("out/t.json", "[1, 2, 3, 4, 5]"), settings: s)
        #expect(json.first?.message == "is named .json but is larger than 8 bytes: it was not checked")
    }

    @Test func aCSVDeclaredAsAFileIsStillATableByName() throws {
        #expect(try fileType(output("out/r.csv", "a,b\n1\n", kind: .file)).map(\.row) == [2])
    }

    @Test func findingsPerTaskAreCapped() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("oc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var files: [CollectedFile] = []
        for i in 0..<3 {
            try Data("n\n1\n2\n3\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/\(i).csv"))
            files.append(CollectedFile(source: "\(dir)/\(i).csv", path: "out/\(i).csv", size: 10, sha256: ""))
        }
        let plan = try DocumentReader.readPlan(["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                                "command": ["base": ["/bin/true"]], "outputs": [["pattern": "*.csv"]]])
        var s = settings
        s.maxFindingsPerTask = 4
        let found = OutputChecks.run(files, plan: plan, settings: s)
        #expect(found.count == 5)
        #expect(found.last?.file == "out/1.csv" && found.last?.message.hasPrefix("and 5 more findings") == true,
                "\(found)")
    }

    @Test func feedingInBlocksGivesTheSameRecords() throws {
        let text = Array("h1,h2\n\"a,\"\"b\r\nc\",1\r\n2,3\n".utf8)
        var reader = TableReader(tabs: false)
        var out: [TableReader.Record] = []
        for b in text { try reader.feed([b]) { out.append($0) } }
        try reader.finish { out.append($0) }
        #expect(out == (try TableReader.records(text)))
    }

    // MARK: - min_cell_count

    @Test func smallCountsInCountColumnsAreFlaggedWithRowAndColumn() throws {
        let csv = "region,n_patients,Count,mean_age\nnorth,3,120,40\nsouth,25,0,41\neast,12,9,39\n"
        let found = try MinCellCountCheck().check(output("out/t.csv", csv), settings: settings)
        #expect(found.map { [$0.row, $0.column] } == [[2, 2], [4, 3]])
        #expect(found.map(\.columnName) == ["n_patients", "Count"])
        #expect(found.map(\.value) == ["3", "9"])
        #expect(found.first?.message == "count 3 is below this node's minimum cell count 10")
        #expect(found.allSatisfy { $0.check == "min_cell_count" && $0.file == "out/t.csv" })
    }

    @Test func patternsAreCaseInsensitiveGlobsAndThePlanAddsColumns() throws {
        #expect(MinCellCountCheck.matches("*_count", "Patient_COUNT"))
        #expect(MinCellCountCheck.matches("freq*", "Frequency"))
        #expect(MinCellCountCheck.matches("n", " N "))
        #expect(!MinCellCountCheck.matches("n", "name"))
        #expect(!MinCellCountCheck.matches("n_*", "mean_x"))
        let csv = "site,cases,n\nA,2,50\n"
        #expect(try MinCellCountCheck().check(output("out/t.csv", csv), settings: settings).isEmpty)
        let declared = try MinCellCountCheck().check(output("out/t.csv", csv, countColumns: ["cases"]), settings: settings)
        #expect(declared.map(\.column) == [2])
    }

    @Test func thresholdsZeroNegativesAndNonIntegersAreNotCounts() throws {
        let csv = "n\n0\n-4\n9.5\n10\n 9 \nabc\n"
        var s = settings
        let found = try MinCellCountCheck().check(output("out/t.csv", csv), settings: s)
        #expect(found.map(\.row) == [6] && found.first?.value == " 9 ")
        s.minCellCount = 5
        #expect(try MinCellCountCheck().check(output("out/t.csv", csv), settings: s).isEmpty)
        s.minCellCount = 0
        #expect(try MinCellCountCheck().check(output("out/t.csv", "n\n1\n"), settings: s).isEmpty)
    }

    @Test func onlyTablesAreRead() throws {
        let csv = "n\n3\n"
        #expect(try MinCellCountCheck().check(output("out/t.txt", csv), settings: settings).isEmpty)
        // A .csv is a table whatever kind its rule declares: a plan cannot take it out of the check.
        #expect(try MinCellCountCheck().check(output("out/t.csv", csv, kind: .text), settings: settings).count == 1)
        #expect(try MinCellCountCheck().check(output("out/t.csv", csv, kind: .file), settings: settings).count == 1)
        #expect(try MinCellCountCheck().check(output("out/t.txt", csv, kind: .table), settings: settings).count == 1)
        #expect(try MinCellCountCheck().check(output("out/t.tsv", "a\tn\nx\t3\n"), settings: settings)
                .map(\.column) == [2])
    }

    @Test func theSeparatorIsTheOneTheHeaderUses() throws {
        // A spreadsheet's ;-separated .csv, a tab-separated table named .csv, a |-separated one: read by columns.
        for sep in [";", "\t", "|"] {
            let csv = ["region", "n"].joined(separator: sep) + "\n" + ["\"north, east\"", "3"].joined(separator: sep) + "\n"
            let found = try MinCellCountCheck().check(output("out/t.csv", csv), settings: settings)
            #expect(found.map { [$0.row, $0.column] } == [[2, 2]], "separator \(sep.debugDescription)")
        }
        // Commas inside quotes do not count; a one-column table keeps the file's own separator.
        #expect(try MinCellCountCheck().check(output("out/t.csv", "\"a,b,c\";n\nx;4\n"), settings: settings)
                .map(\.column) == [2])
        #expect(try MinCellCountCheck().check(output("out/t.csv", "n\n2\n"), settings: settings).map(\.row) == [2])
        // A .csv of kind text must still parse as a table.
        let ragged = try FileTypeCheck().check(output("out/t.csv", "a,b\n1\n", kind: .text), settings: settings)
        #expect(ragged.count == 1, "\(ragged)")
    }

    @Test func findingsPerFileAreCapped() throws {
        var s = settings
        s.maxFindingsPerFile = 5
        let csv = "n\n" + String(repeating: "1\n", count: 12)
        let found = try MinCellCountCheck().check(output("out/t.csv", csv), settings: s)
        #expect(found.count == 6)
        #expect(found.prefix(5).map(\.row) == [2, 3, 4, 5, 6])
        #expect(found.last?.row == nil && found.last?.message.hasPrefix("and 7 more counts below") == true)
    }

    @Test func aByteOrderMarkIsNotPartOfTheHeader() throws {
        let found = try MinCellCountCheck().check(output("out/t.csv", bytes: [0xEF, 0xBB, 0xBF] + Array("n\n2\n".utf8)),
                                                  settings: settings)
        #expect(found.map(\.columnName) == ["n"])
    }

    // MARK: - file_type

    static let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13]
    static let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xE0, 0, 16]
    static let zip: [UInt8] = [0x50, 0x4B, 0x03, 0x04, 20, 0]

    func fileType(_ o: CheckedOutput) throws -> [OutputFinding] {
        try FileTypeCheck().check(o, settings: settings)
    }

    @Test func magicBytesAreRecognised() {
        let tar = [UInt8](repeating: 0, count: 257) + Array("ustar".utf8) + [0, 0]
        let cases: [([UInt8], FileTypeCheck.Magic)] = [
            (Self.png, .png), (Self.jpeg, .jpeg), (Array("GIF89a..".utf8), .gif), (Array("%PDF-1.7".utf8), .pdf),
            (Self.zip, .zip), ([0x1F, 0x8B, 8], .gzip), (tar, .tar), ([0x37, 0x7A, 0xBC, 0xAF, 0x27, 0x1C], .sevenZip),
            ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], .xz), (Array("BZh91AY".utf8), .bzip2), ([0x28, 0xB5, 0x2F, 0xFD], .zstd),
        ]
        for (bytes, magic) in cases { #expect(FileTypeCheck.Magic.of(bytes) == magic, "\(magic)") }
        #expect(FileTypeCheck.Magic.of(Array("id,value\n".utf8)) == nil)
    }

    @Test func filesThatAreWhatTheirNamesSayPass() throws {
        #expect(try fileType(output("out/a.png", bytes: Self.png)).isEmpty)
        #expect(try fileType(output("out/a.JPG", bytes: Self.jpeg)).isEmpty)
        #expect(try fileType(output("out/a.jpeg", bytes: Self.jpeg)).isEmpty)
        #expect(try fileType(output("out/a.gif", bytes: Array("GIF87a".utf8))).isEmpty)
        #expect(try fileType(output("out/a.pdf", bytes: Array("%PDF-1.4\n".utf8))).isEmpty)
        #expect(try fileType(output("out/a.json", "{\"a\": [1, 2]}")).isEmpty)
        #expect(try fileType(output("out/a.csv", "a,b\n1,\"2,3\"\n")).isEmpty)
        #expect(try fileType(output("out/a.bin", bytes: [0, 1, 2])).isEmpty)
        #expect(try fileType(output("out/a.png", bytes: Self.png, kind: .image)).isEmpty)
        #expect(try fileType(output("out/a.zip", bytes: Self.zip, kind: .archive)).isEmpty)
        #expect(try fileType(output("out/notes", "héllo\n", kind: .text)).isEmpty)
    }

    @Test func aCSVThatIsAPNGIsFlagged() throws {
        let found = try fileType(output("out/result.csv", bytes: Self.png))
        #expect(found.count == 1)
        #expect(found.first?.message == "is named .csv but is not a table (its content is a PNG image)")
    }

    @Test func aRaggedCSVIsFlaggedAtTheLineThatBreaksIt() throws {
        let found = try fileType(output("out/r.csv", "a,b,c\n1,2,3\n4,5\n"))
        #expect(found.map(\.row) == [3])
        #expect(found.first?.message == "is named .csv but is not a table: line 3 has 2 fields where the header (line 1) has 3")
        let open = try fileType(output("out/r.csv", "a,b\n\"1,2\n"))
        #expect(open.first?.message == "is named .csv but is not a table: the quoted field starting on line 2 is never closed")
        let binary = try fileType(output("out/r.tsv", bytes: Array("a\tb\n".utf8) + [0xC3, 0x28, 0x09, 0x31, 0x0A]))
        #expect(binary.first?.message == "is named .tsv but is not a table: line 2 is not UTF-8 text")
        // Blank lines are not records.
        #expect(try fileType(output("out/r.csv", "a,b\n1,2\n\n3,4\n")).isEmpty)
    }

    @Test func undeclaredArchivesAreFlaggedByContentOrName() throws {
        let byContent = try fileType(output("out/data.bin", bytes: Self.zip))
        #expect(byContent.first?.message == "is a zip archive; archives are allowed only from an output rule of kind \"archive\"")
        let hidden = try fileType(output("out/data.csv", bytes: [0x1F, 0x8B, 8, 0]))
        #expect(hidden.first?.message.hasPrefix("is a gzip archive") == true)
        let byName = try fileType(output("out/data.tar.gz", "plain"))
        #expect(byName.first?.message.hasPrefix("is named .gz (an archive)") == true)
        let declaredButNot = try fileType(output("out/data.zip", "plain", kind: .archive))
        #expect(declaredButNot.first?.message.hasPrefix("is declared an archive (kind \"archive\") but") == true)
    }

    @Test func namesAndKindsThatLieAreFlagged() throws {
        #expect(try fileType(output("out/a.png", bytes: Self.jpeg)).first?.message
                == "is named .png but is not a PNG image (its content is a JPEG image)")
        #expect(try fileType(output("out/a.pdf", "hello")).first?.message == "is named .pdf but is not a PDF document")
        #expect(try fileType(output("out/a.json", "{\"a\": ")).first?.message == "is named .json but does not parse as JSON")
        #expect(try fileType(output("out/a.svg", "<svg/>", kind: .image)).first?.message
                == "is declared an image (kind \"image\") but is not a PNG, JPEG or GIF image")
        #expect(try fileType(output("out/a.txt", bytes: [0x61, 0x62, 0xE2, 0x82], kind: .text)).first?.message
                == "is declared text (kind \"text\") but is not UTF-8 text (at byte 2)")
        #expect(try fileType(output("out/a.dat", "x,y\n1\n", kind: .table)).first?.message
                == "is declared a table (kind \"table\") but is not a table: line 2 has 1 fields where the header (line 1) has 2")
    }

    @Test func utf8IsValidatedAcrossBlocks() {
        let text = Array("aé€𝄞".utf8)
        #expect(FileTypeCheck.utf8Scan(text[...]) == .valid)
        #expect(FileTypeCheck.utf8Scan(text[0..<(text.count - 2)]) == .incomplete(6))
        #expect(FileTypeCheck.utf8Scan([0x61, 0xC0, 0x80][...]) == .invalid(1))  // overlong
        #expect(FileTypeCheck.utf8Scan([0xED, 0xA0, 0x80][...]) == .invalid(0))  // surrogate
    }

    // MARK: - Running and the event form

    @Test func eventsCarryNoCellValuesColumnNamesOrToolChosenPaths() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("oc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("secret_count\n7\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/patients-of-dr-x.csv"))
        try Data("n\n2\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/fixed.csv"))
        let files = [CollectedFile(source: "\(dir)/patients-of-dr-x.csv", path: "out/patients-of-dr-x.csv", size: 15,
                                   sha256: ""),
                     CollectedFile(source: "\(dir)/fixed.csv", path: "out/fixed.csv", size: 4, sha256: "")]
        let plan = try DocumentReader.readPlan(["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                                "command": ["base": ["/bin/true"]],
                                                "outputs": [["pattern": "*.csv"], ["pattern": "fixed.csv"]]])
        let found = OutputChecks.run(files, plan: plan, settings: settings)
        #expect(found.map(\.file) == ["out/patients-of-dr-x.csv", "out/fixed.csv"])
        let events = OutputChecks.eventForm(found, files: files, plan: plan, pathsLeave: false)
        let text = String(decoding: try JSONEncoder().encode(events), as: UTF8.self)
        #expect(!text.contains("secret_count") && !text.contains("\"7\"") && !text.contains("dr-x"), "\(text)")
        #expect(events.first?["file_index"] == 1 && events.first?["row"] == 2 && events.first?["column"] == 1)
        #expect(events.last?["file"] == "out/fixed.csv")
        let open = OutputChecks.eventForm(found, files: files, plan: plan, pathsLeave: true)
        #expect(open.first?["file"] == "out/patients-of-dr-x.csv")
    }

    @Test func planKindsAndCountColumnsAreReadAndChecked() throws {
        func plan(_ outputs: JSONValue) throws -> ToolPlan {
            try DocumentReader.readPlan(["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                         "command": ["base": ["/bin/true"]], "outputs": outputs])
        }
        let p = try plan([["pattern": "*.csv", "kind": "table", "count_columns": ["n_patients"]]])
        #expect(p.outputs.first?.kind == .table && p.outputs.first?.countColumns == ["n_patients"])
        #expect(throws: ValidationError.self) { try plan([["pattern": "*.csv", "kind": "spreadsheet"]]) }
        do {
            _ = try plan([["pattern": "*.png", "kind": "image", "count_columns": ["n"]]])
            Issue.record("count_columns on an image was accepted")
        } catch {
            #expect("\(error)".contains("plan.outputs[0].count_columns"), "\(error)")
        }
        do {
            _ = try plan([["pattern": "*.csv", "kind": "spreadsheet"]])
        } catch {
            #expect("\(error)".contains("plan.outputs[0].kind"), "\(error)")
        }
    }
}
