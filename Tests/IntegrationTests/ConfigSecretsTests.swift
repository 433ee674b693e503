import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `password_env`/`token_env` through the real daemon: the secret comes from the environment the daemon was started
/// with (and nowhere else), reaches the server it is bound to, and a daemon started without the variable refuses to
/// start, naming the credential and the variable and never a secret.
@Suite(.serialized)
struct ConfigSecretsTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    func node(_ name: String) throws -> TestNode {
        try TestNode(name, extra: """
            \(TestNode.hostProcesses)
            [stage_in]
            file_allowed_urls = ["http://127.0.0.1:18080/files/"]
            retries = 1
            [credentials.files-env]
            username = "fem-files"
            password_env = "FEM_TEST_FILES_PASSWORD"
            urls = ["http://127.0.0.1:18080/files/"]
            """)
    }

    var password: String {
        get throws {
            try String(contentsOfFile: "\(web)/password-fem-files", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    @Test func aPasswordFromTheDaemonsEnvironmentReachesItsServer() throws {
        let dir = "cfg-\(UUID().uuidString.prefix(6))"
        let file = "\(web)/files/\(dir)/a.txt"
        try FileManager.default.createDirectory(atPath: "\(web)/files/\(dir)", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        try "from-env\n".write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        defer { try? FileManager.default.removeItem(atPath: "\(web)/files/\(dir)") }
        var h = SHA256()
        h.update(Array("from-env\n".utf8))
        let sha = h.finalizeHex()

        let node = try node("cfg-env")
        try node.start(environment: ["FEM_TEST_FILES_PASSWORD": try password])
        let op = try Operator(node: node)
        guard case .object(var plan) = Tasks.plan(["/bin/sh", "-c", "cat \"$FEM_SRC_DIR\"/a.txt"]) else {
            Issue.record("no plan")
            return
        }
        plan["source"] = ["files": [["url": .string("http://127.0.0.1:18080/files/\(dir)/a.txt"), "path": "a.txt",
                                     "sha256": .string(sha), "credentials": "files-env"]]]
        let id = UUID().uuidString.lowercased()
        let t: [String: JSONValue] = ["schema_version": 1, "task_id": .string(id), "execution_id": "exec-cfg",
                                      "plan": .object(plan), "params": [:]]
        try op.submit(t)
        try op.waitForFinal([id], timeout: 30)
        let e = try #require(op.finalState(of: id))
        #expect(e.state == .completed, "\(e.detail)")
        let out = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(id)/logs/stdout.log", encoding: .utf8)
        #expect(out == "from-env\n")
        #expect(!node.log.contains(try password))
    }

    @Test func aDaemonWithoutTheVariableRefusesToStartAndSaysWhich() throws {
        let node = try node("cfg-noenv")
        // The test process's own environment is not the daemon's: only PATH is given.
        let r = try Shell.run([try TestEnv.binary("fem-client"), "daemon", "--config", node.configPath],
                              environment: ["PATH": "/usr/bin:/bin"], cwd: node.dir)
        #expect(r.status != 0)
        #expect(r.output.contains("credentials.\"files-env\".password_env: FEM_TEST_FILES_PASSWORD is not set"),
                "\(r.output)")
        #expect(!r.output.contains(try password))
        // An empty variable is no password either.
        let empty = try Shell.run([try TestEnv.binary("fem-client"), "check", "--config", node.configPath],
                                  environment: ["PATH": "/usr/bin:/bin", "FEM_TEST_FILES_PASSWORD": ""], cwd: node.dir)
        #expect(empty.status != 0 && empty.output.contains("FEM_TEST_FILES_PASSWORD is not set"), "\(empty.output)")
    }
}
