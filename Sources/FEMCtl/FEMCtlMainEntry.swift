import FEMCommandLine

extension FEMCtlCommand {
    /// The entry point of `femctl` (`CommandMain`: one line per runtime failure, the usage banner only for a bad
    /// command line).
    public static func mainReportingFailures() async -> Never {
        await CommandMain.run(FEMCtlCommand.self)
    }
}
