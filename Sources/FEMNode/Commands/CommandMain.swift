import FEMCommandLine

extension FEMClientCommand {
    /// The entry point of `fem-client` (`CommandMain`: one line per runtime failure, the usage banner only for a bad
    /// command line).
    public static func mainReportingFailures() async -> Never {
        await CommandMain.run(FEMClientCommand.self)
    }
}
