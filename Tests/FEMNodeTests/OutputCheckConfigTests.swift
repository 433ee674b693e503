@testable import FEMNode
import FEMStaging
import Testing

/// `[outputs.checks]`: defaults, values, and the problems named by key.
struct OutputCheckConfigTests {
    func parse(_ sections: String, env: [String: String] = [:]) throws -> NodeConfig {
        try NodeConfig.parse(NodeConfigTests.toml() + "\n" + sections, source: "t", environment: env)
    }

    @Test func defaultsScreenTablesAndFileTypesWithoutBlocking() throws {
        let c = try NodeConfig.parse(NodeConfigTests.toml(), source: "t", environment: [:])
        #expect(c.outputChecks == OutputCheckSettings())
        #expect(c.outputChecks.minCellCount == 10 && c.outputChecks.fileTypes && !c.outputChecks.blockOnFindings)
        #expect(c.outputChecks.countColumns.contains("*_count") && c.outputChecks.checks.count == 2)
    }

    @Test func valuesAreRead() throws {
        let c = try parse("""
            [outputs]
            require_approval = true
            [outputs.checks]
            min_cell_count = 0
            count_columns = ["cases"]
            file_types = false
            block_on_findings = true
            """)
        #expect(c.outputChecks.minCellCount == 0 && c.outputChecks.countColumns == ["cases"])
        #expect(!c.outputChecks.fileTypes && c.outputChecks.blockOnFindings)
        #expect(c.outputChecks.checks.isEmpty, "both checks off")
        let env = try parse("", env: ["FEM_OUTPUTS_CHECKS_MIN_CELL_COUNT": "5"])
        #expect(env.outputChecks.minCellCount == 5)
    }

    @Test func problemsNameTheirKeys() {
        let p = NodeConfigTests.problems(NodeConfigTests.toml() + """

            [outputs.checks]
            min_cell_count = -1
            count_columns = ["n", ""]
            block_on_findings = true
            colour = "red"
            """)
        #expect(p.contains { $0.hasPrefix("outputs.checks.min_cell_count: -1 is out of range") }, "\(p)")
        #expect(p.contains { $0.hasPrefix("outputs.checks.count_columns[1]: must be a column name pattern") }, "\(p)")
        #expect(p.contains("outputs.checks.block_on_findings = true needs outputs.require_approval = true: without "
                           + "the airlock there is no approval to block"), "\(p)")
        #expect(p.contains { $0.hasPrefix("outputs.checks.colour: is not a known key") }, "\(p)")
    }
}
