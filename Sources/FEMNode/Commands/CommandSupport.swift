import ArgumentParser
import FEMCore
import FEMJournal
import Foundation

extension ConfigOption {
    /// The node configuration for a command: a file that is not there names the path tried (a relative `--config`
    /// is read from the current folder) and what to do (exit 1); a file with problems lists them (exit 2).
    func loadConfig(brokerFiles: Bool = true) throws -> NodeConfig {
        if let why = ConfigOption.unreadable(config) { throw CommandFailure(why) }
        do {
            return try NodeConfig.load(path: config, environment: ProcessInfo.processInfo.environment,
                                       brokerFiles: brokerFiles)
        } catch let e as ConfigError {
            throw CommandFailure.invalid("\(config): " + e.description)
        }
    }

    /// Why the configuration file at `path` cannot be read, with the path it was looked for at and the fix; nil when
    /// it can be read.
    static func unreadable(_ path: String) -> String? {
        let full = NodeConfig.absolutePath(path)
        let shown = full == path ? path : "\(path) (\(full))"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory) else {
            let example = URL(fileURLWithPath: full).deletingLastPathComponent().appendingPathComponent(
                "fem-client.example.toml").path
            let where_ = path.hasPrefix("/") ? "" : " (a relative path is read from the current folder, "
                + "\(FileManager.default.currentDirectoryPath))"
            if FileManager.default.fileExists(atPath: example) {
                return "no configuration file \(shown): copy \(example) to it and edit it (install.sh does this), "
                    + "or give --config <file> or FEM_CONFIG"
            }
            return "no configuration file \(shown)\(where_): give --config <file> or set FEM_CONFIG"
        }
        if isDirectory.boolValue { return "the configuration file \(shown) is a folder, not a file" }
        if !FileManager.default.isReadableFile(atPath: full) {
            return "cannot read the configuration file \(shown): permission denied (run as the node's user, or "
                + "check the file's mode)"
        }
        return nil
    }
}

extension NodeConfig {
    /// The daemon's journal for the reading commands (`tasks`, `show`, `outputs`): a work dir the daemon never ran
    /// in is said so, not as SQLite's "unable to open database file".
    func openJournal() throws -> SQLiteJournal {
        guard FileManager.default.fileExists(atPath: journalPath) else {
            throw CommandFailure("no journal \(journalPath): the daemon has not run with this work dir (node.work_dir "
                                 + "in \(source))")
        }
        return try SQLiteJournal(path: journalPath, nodeID: nodeID)
    }
}
