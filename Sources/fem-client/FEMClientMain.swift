import FEMNode

@main
struct FEMClientMain {
    static func main() async {
        await FEMClientCommand.mainReportingFailures()
    }
}
