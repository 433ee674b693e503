import FEMCore
import Foundation

extension LocalNode {
    /// A document file's bytes; a file that cannot be read is named with the reason (exit 1).
    static func read(_ path: String) throws -> Data {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            let full = NodeConfig.absolutePath(path)
            throw CommandFailure("cannot read \(path): no such file" + (full == path ? "" : " (\(full))"))
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: path) else {
            throw CommandFailure("cannot read \(path): " + (isDirectory.boolValue ? "it is a folder" : "permission denied"))
        }
        return data
    }

    /// `--dataset id=path` for a local run: a folder on the author's machine standing in for a dataset of the node.
    static func addDatasets(_ given: [String], to config: inout NodeConfig) throws {
        for entry in given {
            guard let eq = entry.firstIndex(of: "="), eq != entry.startIndex else {
                throw CommandFailure.invalid("--dataset \(entry): expected id=path")
            }
            let id = String(entry[..<eq])
            let path = NodeConfig.absolutePath(String(entry[entry.index(after: eq)...]))
            guard Patterns.matches(Patterns.datasetID, id) else {
                throw CommandFailure.invalid("--dataset \(entry): \"\(id)\" is not a dataset id")
            }
            var isDirectory: ObjCBool = false
            guard !path.isEmpty, FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw CommandFailure.invalid("--dataset \(entry): \(path.isEmpty ? "no path given" : "\(path) does not exist")")
            }
            config.datasets[id] = NodeConfig.Dataset(path: path, labels: [:])
        }
    }

    /// Fails before a local run when the task names a dataset this configuration lacks (the node would decline it).
    static func checkDatasets(_ task: TaskSpec, config: NodeConfig, configPath: String) throws {
        let paths = ToolPaths.under("\(config.workDir)/sandboxes/\(task.taskID)")
        let context = RenderContext(nodeID: config.nodeID, nodeName: config.nodeName, paths: paths,
                                    datasets: config.datasets.mapValues(\.path))
        do {
            _ = try Renderer.render(task, context: context, timeoutSeconds: config.defaultTimeoutSeconds)
        } catch RenderError.unknownDataset(let id) {
            throw missingDataset(id, config: config, configPath: configPath)
        } catch {
            // Anything else is the runner's to report, as the daemon would.
        }
    }

    /// "dataset demo is not in this node's configuration": where to add it, or how to give it for one run.
    static func missingDataset(_ id: String, config: NodeConfig, configPath: String) -> CommandFailure {
        let have = config.datasets.isEmpty ? "none" : config.datasets.keys.sorted().joined(separator: ", ")
        let file = FileManager.default.fileExists(atPath: configPath) ? configPath : "the node's configuration"
        return CommandFailure.invalid(
            "the task uses dataset \"\(id)\", which this node does not have (its datasets: \(have)): add "
                + "[datasets.\(id)] with path = \"/folder/of/the/data\" to \(file), or for a local try give "
                + "--dataset \(id)=/folder/of/the/data")
    }
}
