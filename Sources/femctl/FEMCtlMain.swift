import FEMCtl

@main
struct FEMCtlMain {
    static func main() async {
        await FEMCtlCommand.mainReportingFailures()
    }
}
