/// A runtime failure of a command-line tool (`fem-client`, `femctl`): printed as one line
/// `<tool> <command>: <message>` on stderr, and the process exits with `code` — never the usage banner and 64,
/// which are kept for command lines the parser refuses.
///
/// Exit codes, the same for both tools (and `fem-client status`):
/// - 0: done;
/// - 1 (`failure`): something did not work (a broker that does not answer, a file that cannot be read, a task that
///   failed, a check that failed);
/// - 2 (`invalid`): what was given is not acceptable (a plan or task that does not validate, a `--param` of the
///   wrong type, a dataset the node lacks, a configuration with problems) or a task was declined;
/// - 3 (`notRunning`): the daemon is not running (`fem-client status`, as `systemctl status`);
/// - 64: a bad command line (unknown option, missing argument), with the usage banner.
public struct CommandFailure: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var code: Int32

    public static let failure: Int32 = 1
    public static let invalid: Int32 = 2
    public static let notRunning: Int32 = 3
    public static let usage: Int32 = 64

    public init(_ message: String, code: Int32 = CommandFailure.failure) {
        self.message = message
        self.code = code
    }

    /// Invalid input (exit 2).
    public static func invalid(_ message: String) -> CommandFailure { CommandFailure(message, code: invalid) }

    public var description: String { message }
}
