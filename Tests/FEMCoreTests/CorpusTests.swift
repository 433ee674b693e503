import FEMCore
import Foundation
import Testing

/// The validation corpus under Corpus/ (made by Corpus/make_corpus.py): the Swift validator reports exactly the
/// expected paths, and the JSON Schemas in docs/templates agree with it (Python's jsonschema runs them).
struct CorpusTests {
    struct Case: Decodable {
        var kind: String
        var valid: Bool
        var schema_valid: Bool
        var paths: [String]
        var document: JSONValue
    }

    static let corpusDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus")
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func load() throws -> [(String, Case)] {
        let names = try FileManager.default.contentsOfDirectory(atPath: corpusDir.path).filter { $0.hasSuffix(".json") }
        return try names.sorted().map { name in
            (name, try JSONDecoder().decode(Case.self, from: Data(contentsOf: corpusDir.appendingPathComponent(name))))
        }
    }

    static func swiftPaths(_ c: Case) -> [String] {
        do {
            if c.kind == "plan" { _ = try DocumentReader.readPlan(c.document) } else { _ = try DocumentReader.readTask(c.document) }
            return []
        } catch let e as ValidationError {
            return e.issues.map(\.path).sorted()
        } catch {
            return ["unexpected \(error)"]
        }
    }

    @Test func corpusHasAtLeastFortyDocumentsOfBothKinds() throws {
        let cases = try Self.load()
        #expect(cases.count >= 40)
        #expect(cases.contains { $0.1.valid } && cases.contains { !$0.1.valid })
        #expect(Set(cases.map(\.1.kind)) == ["plan", "task"])
    }

    @Test func swiftValidatorReportsExactlyTheExpectedPaths() throws {
        for (name, c) in try Self.load() {
            let paths = Self.swiftPaths(c)
            #expect(paths.isEmpty == c.valid, "\(name): valid should be \(c.valid), got \(paths)")
            #expect(Set(paths) == Set(c.paths), "\(name): expected \(c.paths), got \(paths)")
        }
    }

    @Test func jsonSchemasAgreeWithTheSwiftValidator() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.corpusDir.deletingLastPathComponent().appendingPathComponent("schema_check.py").path,
                             Self.repoRoot.appendingPathComponent("docs/templates").path, Self.corpusDir.path]
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        try #require(process.terminationStatus == 0,
                     "schema_check.py failed (python3 with jsonschema is required; test.sh installs it): \(errText)")
        struct Line: Decodable { var file: String; var schema_valid: Bool }
        let lines = try String(decoding: data, as: UTF8.self).split(separator: "\n").map {
            try JSONDecoder().decode(Line.self, from: Data($0.utf8))
        }
        let cases = Dictionary(uniqueKeysWithValues: try Self.load())
        #expect(lines.count == cases.count)
        var beyondSchema = 0
        for line in lines {
            let c = try #require(cases[line.file])
            #expect(line.schema_valid == c.schema_valid, "\(line.file): the schema says \(line.schema_valid)")
            let swiftValid = Self.swiftPaths(c).isEmpty
            if line.schema_valid != swiftValid {
                // Only the documented checks beyond the schema may differ, and only in one direction.
                #expect(line.schema_valid && !swiftValid, "\(line.file): schema rejects what Swift accepts")
                beyondSchema += 1
            }
        }
        #expect(beyondSchema == cases.values.filter { $0.schema_valid != $0.valid }.count)
    }

    @Test func everyExampleValidates() throws {
        let dir = Self.repoRoot.appendingPathComponent("docs/templates/examples")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".json") }
        #expect(files.count >= 8)
        for f in files {
            let value = try JSONValue.parse(Data(contentsOf: dir.appendingPathComponent(f)))
            #expect(throws: Never.self, "\(f)") { _ = try DocumentReader.readAny(value) }
        }
    }

    @Test func messageNamesTheValueAndTheAllowedTypes() throws {
        let doc = try JSONValue.parse(Data("""
            {"schema_version":1,"id":"t","version":"1","launcher":"process","command":{"base":["x"],"args":[
            {"id":"a","type":"str"},{"id":"b","type":"str"},{"id":"c","type":"integr"}]}}
            """.utf8))
        let error = try #require(throws: ValidationError.self) { try DocumentReader.readPlan(doc) }
        #expect(error.description
                == #"plan.command.args[2].type: "integr" is not one of str, int, float, bool, file, dataset"#)
    }

    @Test func unsupportedVersionSaysWhichAreAccepted() throws {
        let doc = JSONValue.object(["schema_version": .int(9)])
        let error = try #require(throws: ValidationError.self) { try DocumentReader.readPlan(doc) }
        #expect(error.issues.contains { $0.path == "plan.schema_version" && $0.message.contains("accepts 1") })
    }

    @Test func aSecretTokenNeverAppearsInAMessage() throws {
        let doc = try JSONValue.parse(Data("""
            {"schema_version":1,"execution_id":"e","plan":{"schema_version":1,"id":"t","version":"1",
            "launcher":"process","command":{"base":["x"]}},"stage_out":{"url":"gopher://x","token":"TOPSECRET"}}
            """.utf8))
        let error = try #require(throws: ValidationError.self) { try DocumentReader.readTask(doc) }
        #expect(!error.description.contains("TOPSECRET"))
        #expect(error.issues.map(\.path) == ["stage_out.url"])
    }
}
