import FEMCore
import FEMSystem
import FEMTransport
import Foundation

extension FEMCtlCommand.Submit {
    /// The task or plan file's bytes; a file that cannot be read is named with the reason.
    static func read(_ file: String) throws -> Data {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) else {
            let full = URL(fileURLWithPath: file).standardizedFileURL.path
            throw CommandFailure("cannot read \(file): no such file" + (full == file ? "" : " (\(full))"))
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: file) else {
            throw CommandFailure("cannot read \(file): " + (isDirectory.boolValue ? "it is a folder" : "permission denied"))
        }
        return data
    }

    /// A task sent to a node queue nobody consumes waits there for ever (a typo in `--node`, or the node is down):
    /// say so on stderr, or refuse to send with `--require-consumer`. The count comes from a passive queue declare
    /// on a channel of its own (no management API needed).
    static func checkConsumer(_ conn: AMQPConnection, node: String, queue: String, require: Bool) throws {
        let channel: UInt16 = 9
        try conn.openChannel(channel)
        let consumers = try conn.queueConsumers(queue, channel: channel)
        guard (consumers ?? 0) == 0 else { return }
        let what = "no node consumes queue \(queue): node \"\(node)\" is not connected (is the id spelled as in its "
            + "node.id, and is its daemon running? `fem-client status` on the node)"
        if require {
            throw CommandFailure("\(what); nothing sent (--require-consumer)")
        }
        try? FileWriter.writeAll(2, Array("femctl submit: warning: \(what); the task waits in the queue until that node connects\n".utf8))
    }
}
