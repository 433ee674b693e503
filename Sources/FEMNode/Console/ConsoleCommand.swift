import ArgumentParser
import FEMCore
import FEMSystem
import Foundation
import HummingbirdBcrypt

/// `fem-client console`: the steward's web console's tools (the console itself is served by the daemon).
struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Tools for the steward's web console ([console], docs/console.md).",
        subcommands: [HashPassword.self])

    struct HashPassword: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hash-password",
            abstract: "Print a bcrypt hash for [console.accounts.<name>] password_hash, of a password read from stdin.",
            discussion: "The password is read from standard input (one line; never from the command line, where other "
                + "users could see it): `fem-client console hash-password` and type it, or pipe it in.")
        @Option(help: "bcrypt's cost (log2 of its rounds), 10 to 16.") var cost = 12

        func run() async throws {
            guard (10...16).contains(cost) else {
                throw CommandFailure("--cost: \(cost) is out of range (10…16)", code: CommandFailure.invalid)
            }
            let interactive = Posix.isTerminal(0)
            if interactive { try? FileWriter.writeAll(2, Array("password (not shown): ".utf8)) }
            let line = TerminalEcho.off(0) { readLine(strippingNewline: true) }
            if interactive { try? FileWriter.writeAll(2, Array("\n".utf8)) }
            guard let password = line, !password.isEmpty else {
                throw CommandFailure("no password on standard input (type one, or pipe it in)")
            }
            guard password.count >= 8 else { throw CommandFailure("the password is \(password.count) characters: use at least 8") }
            // bcrypt reads at most 72 bytes: a longer password would be checked only by its start.
            guard password.utf8.count <= 72 else {
                throw CommandFailure("the password is \(password.utf8.count) bytes: bcrypt uses at most 72")
            }
            print(Bcrypt.hash(password, cost: UInt8(cost)))
        }
    }
}
