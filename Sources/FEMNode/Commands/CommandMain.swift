import ArgumentParser
import FEMCore
import FEMSystem
import Foundation

extension FEMClientCommand {
    /// The entry point of `fem-client`: a command line the parser refuses gets the usage banner and exit 64; a
    /// command that fails while it runs prints one line `fem-client <command>: <what failed>` (exit codes in
    /// `CommandFailure`).
    public static func mainReportingFailures() async -> Never {
        await CommandMain.run(FEMClientCommand.self)
    }
}

/// Parses, runs, and reports a failure as `<tool> <command>: <message>` (shared shape with femctl's copy).
enum CommandMain {
    static func run<Root: AsyncParsableCommand>(_ root: Root.Type,
                                                arguments: [String] = Array(CommandLine.arguments.dropFirst())) async
        -> Never {
        var command: any ParsableCommand
        do {
            command = try await Root.asyncParseAsRoot(arguments)
        } catch {
            Root.exit(withError: error)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            Foundation.exit(0)
        } catch let failure as CommandFailure {
            report(failure.message, code: failure.code, root: root, arguments: arguments)
        } catch let error as ArgumentParser.ValidationError {
            Root.exit(withError: error)
        } catch let error as ExitCode {
            Root.exit(withError: error)
        } catch let error as CleanExit {
            Root.exit(withError: error)
        } catch {
            report("\(error)", code: CommandFailure.failure, root: root, arguments: arguments)
        }
    }

    static func report(_ message: String, code: Int32, root: any ParsableCommand.Type, arguments: [String]) -> Never {
        fflush(nil)
        let line = "\(commandPath(root, arguments)): \(message)\n"
        try? FileWriter.writeAll(2, Array(line.utf8))
        Foundation.exit(code)
    }

    /// "fem-client outputs approve": the root and the subcommands named at the start of the command line.
    static func commandPath(_ root: any ParsableCommand.Type, _ arguments: [String]) -> String {
        var names = [root._commandName]
        var current = root
        for argument in arguments {
            guard let sub = current.configuration.subcommands.first(where: { $0._commandName == argument }) else { break }
            names.append(argument)
            current = sub
        }
        return names.joined(separator: " ")
    }
}
