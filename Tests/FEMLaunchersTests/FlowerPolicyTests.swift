import FEMCore
@testable import FEMLaunchers
import Foundation
import Testing

/// What a plan may hand pip, and which SuperLinks a task may name.
@Suite
struct FlowerPolicyTests {
    let hash = String(repeating: "ab", count: 32)

    func reason(_ entry: String) -> String? {
        if case .failure(let d) = PythonRequirement.parse(entry) { return d.reason }
        return nil
    }

    @Test func pinnedRequirementsParse() throws {
        #expect(try PythonRequirement.parse("numpy==2.1.3").get() == PythonRequirement(name: "numpy", version: "2.1.3",
                                                                                      hashes: []))
        #expect(try PythonRequirement.parse("flwr==1.41.0").get().line == "flwr==1.41.0")
        for ok in ["scikit-learn==1.5.2", "zope.interface==7.0", "pkg_x==1!2.0rc1.post2.dev3+local.1", "A==0"] {
            #expect(reason(ok) == nil, "\(ok)")
        }
        let hashed = try PythonRequirement.parse("numpy==2.1.3 --hash=sha256:\(hash) --hash=sha256:\(hash)").get()
        #expect(hashed.hashes == [hash, hash])
        #expect(hashed.line == "numpy==2.1.3 --hash=sha256:\(hash) --hash=sha256:\(hash)")
    }

    @Test func optionsURLsAndPathsAreRefusedNamingTheEntry() throws {
        let tail = "; only name==version entries are allowed, optionally followed by --hash=sha256:<hex> (e.g. \"numpy==2.1.3\")"
        #expect(reason("-r") == "\"-r\" is a pip option" + tail)
        #expect(reason("-r /etc/shadow") == "\"-r /etc/shadow\" is a pip option" + tail)
        #expect(reason("--index-url=https://evil.example/simple") == "\"--index-url=https://evil.example/simple\" is a pip option" + tail)
        #expect(reason("--target=/usr/lib/python3/dist-packages")?.contains("is a pip option") == true)
        #expect(reason("x @ https://attacker.example/x.tar.gz") == "\"x @ https://attacker.example/x.tar.gz\" is a URL or a direct reference" + tail)
        #expect(reason("https://attacker.example/x-1.0.whl")?.contains("is a URL or a direct reference") == true)
        #expect(reason("git+https://host/repo")?.contains("is a URL or a direct reference") == true)
        #expect(reason("/etc/shadow") == "\"/etc/shadow\" is a path" + tail)
        #expect(reason("./pkg") == "\"./pkg\" is a path" + tail)
        #expect(reason("../x.whl")?.contains("is a path") == true)
        #expect(reason("numpy") == "\"numpy\" is not a pinned name==version" + tail)
        #expect(reason("numpy>=1.0")?.contains("is not a pinned name==version") == true)
        #expect(reason("numpy==1.*") == "\"numpy==1.*\" does not pin an exact version (1.*)" + tail)
        #expect(reason("numpy[extra]==1.0")?.contains("is not a pinned name==version") == true)
        #expect(reason("numpy==1.0; python_version<'3'")?.contains("does not pin an exact version") == true)
        #expect(reason("numpy==1.0 --hash=md5:abc")?.contains("has \"--hash=md5:abc\" where only --hash=sha256") == true)
        #expect(reason("numpy==1.0 -r /etc/shadow")?.contains("has \"-r\" where only") == true)
        #expect(reason("numpy==1.0  --hash=sha256:\(hash)")?.contains("has \"\" where only") == true)
        #expect(reason("") != nil)
    }

    @Test func parseAllNamesThePositionAndWantsHashesForAllOrNone() throws {
        guard case .failure(let d) = PythonRequirement.parseAll(["flwr==1.41.0", "-r", "/etc/shadow"]) else {
            Issue.record("accepted an option"); return
        }
        #expect(d.reason.hasPrefix("flower.requirements[1]: \"-r\" is a pip option"))
        guard case .failure(let mixed) = PythonRequirement.parseAll(["a==1 --hash=sha256:\(hash)", "b==2"]) else {
            Issue.record("accepted a mix"); return
        }
        #expect(mixed.reason.hasPrefix("flower.requirements: either every entry has --hash=sha256:... or none does"))
        #expect(try PythonRequirement.parseAll(["a==1", "b==2"]).get().count == 2)
    }

    @Test func hostPortsAreParsedAndComparedAsValues() {
        #expect(HostPort.parse("SuperLink.Example.org:9092") == HostPort(host: "superlink.example.org", port: 9092))
        #expect(HostPort.parse("[2001:DB8::1]:9092") == HostPort(host: "2001:db8::1", port: 9092))
        #expect(HostPort.parse("127.0.0.1:09092") == HostPort(host: "127.0.0.1", port: 9092))
        for bad in ["x.org", "x.org:", ":9092", "x.org:0", "x.org:70000", "https://x.org:9092", "user@x.org:9092",
                    "x.org:9092/path", "2001:db8::1:9092", "x org:1", "[]:1"] {
            #expect(HostPort.parse(bad) == nil, "\(bad)")
        }
    }

    /// pip gets only the node's own requirements file and flags: a stand-in interpreter makes a venv whose `pip`
    /// records its argv (and fails, printing a "secret", when asked to).
    @Test func pipRunsWheelsOnlyWithHashesFromTheNodesFileAndItsWordsStayInTheLog() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-pip-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: "\(dir)/logs", withIntermediateDirectories: true)
        let pip = "\(dir)/pip-template"
        try """
            #!/bin/sh
            for a in "$@"; do echo "$a"; done > "$(dirname "$0")/../pip-args"
            if grep -q failing "$(dirname "$0")/../fem-requirements.txt"; then echo "root:secret-hash:19000"; exit 1; fi
            """.write(toFile: pip, atomically: true, encoding: .utf8)
        let python = "\(dir)/python"
        try "#!/bin/sh\nmkdir -p \"$3/bin\" && cp \"\(pip)\" \"$3/bin/pip\"\n"
            .write(toFile: python, atomically: true, encoding: .utf8)
        chmod(pip, 0o755)
        chmod(python, 0o755)
        let envs = PythonEnvironments(python: python, root: "\(dir)/venvs", wheelDir: nil)
        let pins = try PythonRequirement.parseAll(["numpy==2.4.6 --hash=sha256:\(hash)", "flwr==1.41.0 --hash=sha256:\(hash)"]).get()
        let venv = try await envs.ensure(tool: "t", version: "1", requirements: pins, log: "\(dir)/logs/venv.log")
        let args = try String(contentsOfFile: "\(venv)/pip-args", encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(args == ["install", "--disable-pip-version-check", "--no-input", "--isolated", "--only-binary", ":all:",
                         "--require-hashes", "-r", "\(venv)/fem-requirements.txt"])
        #expect(try String(contentsOfFile: "\(venv)/fem-requirements.txt", encoding: .utf8)
                == "flwr==1.41.0 --hash=sha256:\(hash)\nnumpy==2.4.6 --hash=sha256:\(hash)\n")

        let sourceBuilds = PythonEnvironments(python: python, root: "\(dir)/venvs", wheelDir: "/srv/wheels",
                                              allowSourceBuilds: true)
        let plain = try await sourceBuilds.ensure(tool: "t", version: "1", requirements: [pins[0]].map {
            PythonRequirement(name: $0.name, version: $0.version, hashes: []) }, log: "\(dir)/logs/venv.log")
        #expect(plain != venv, "other install options make another environment")
        #expect(try String(contentsOfFile: "\(plain)/pip-args", encoding: .utf8).split(separator: "\n")
                == ["install", "--disable-pip-version-check", "--no-input", "--isolated", "--no-index", "--find-links",
                    "/srv/wheels", "-r", "\(plain)/fem-requirements.txt"])

        let failing = [PythonRequirement(name: "failing", version: "1.0", hashes: [])]
        do {
            _ = try await envs.ensure(tool: "t", version: "1", requirements: failing, log: "\(dir)/logs/venv.log")
            Issue.record("a failing pip was taken for success")
        } catch let f as TaskFailure {
            #expect(f.failureClass == .stageInFailure)
            #expect(f.message == "installing failing==1.0 failed (exited(1)); see the task's log (logs/venv.log)")
        }
        #expect(try String(contentsOfFile: "\(dir)/logs/venv.log", encoding: .utf8).contains("root:secret-hash:19000"))
    }

    func job(server: String, mode: String = "supernode", requirements: [String] = ["flwr==1.41.0"]) throws -> LaunchJob {
        let doc: JSONValue = ["schema_version": 1, "task_id": "t1", "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "flower", "command": ["base": ["flower"]],
            "source": ["files": [["url": "https://x.org/c.py", "path": "client.py", "sha256": .string(hash)]]],
            "flower": ["mode": .string(mode), "entry": "client.py",
                       "requirements": .array(requirements.map(JSONValue.string))]],
            "flower": ["server": .string(server)]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let paths = ToolPaths.under("/tmp/fem-flower-policy/t1")
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1", paths: paths,
                                                                       datasets: [:]), timeoutSeconds: 30)
        return LaunchJob(task: task, command: command, sandbox: paths)
    }

    func launcher(_ links: [String], insecure: Bool = false) -> FlowerLauncher {
        FlowerLauncher(config: FlowerLauncherConfig(
            python: "/usr/bin/python3", venvDir: "/tmp/venvs", wheelDir: nil, allowInsecure: insecure,
            rootCertificates: nil, connectAttempts: 1, retryDelay: .milliseconds(1), unreachableLimit: .seconds(1),
            allowedSuperlinks: links.compactMap(HostPort.parse)))
    }

    @Test func onlyListedSuperLinksAreAccepted() throws {
        let l = launcher(["superlink.example.org:9092"])
        #expect(l.policyCheck(try job(server: "SUPERLINK.example.org:9092")) == nil)
        #expect(l.policyCheck(try job(server: "superlink.example.org:9093"))
                == "flower.server: \"superlink.example.org:9093\" is not in this node's launchers.flower.allowed_superlinks")
        #expect(l.policyCheck(try job(server: "10.0.0.5:9092"))?.contains("is not in this node's") == true)
        #expect(launcher([]).policyCheck(try job(server: "superlink.example.org:9092"))
                == "flower.server: this node takes part in no Flower federation (launchers.flower.allowed_superlinks is empty)")
        #expect(l.policyCheck(try job(server: "superlink.example.org:9092", requirements: ["-r", "/etc/shadow"]))?
            .hasPrefix("flower.requirements[0]: \"-r\" is a pip option") == true)
        #expect(l.policyCheck(try job(server: "superlink.example.org:9092", mode: "script"))?
            .hasSuffix("script clients run only where launchers.flower.allow_insecure = true") == true)
        #expect(launcher(["superlink.example.org:9092"], insecure: true)
            .policyCheck(try job(server: "superlink.example.org:9092", mode: "script")) == nil)
    }
}
