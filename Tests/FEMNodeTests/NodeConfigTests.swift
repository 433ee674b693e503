@testable import FEMNode
import FEMCore
import FEMStaging
import Foundation
import Testing

struct NodeConfigTests {
    static let dir: String = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("fem-config-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        for f in ["ca.pem", "c.pem", "c.key"] { _ = FileManager.default.createFile(atPath: "\(d)/\(f)", contents: Data()) }
        return d
    }()

    static func toml(_ extra: String = "", broker: String = "url = \"amqps://fem@localhost:5671/%2f\"") -> String {
        """
        [node]
        id = "n1"
        \(extra)
        [broker]
        \(broker)
        ca_file = "\(dir)/ca.pem"
        cert_file = "\(dir)/c.pem"
        key_file = "\(dir)/c.key"
        password_file = ""
        """
    }

    static func problems(_ text: String, env: [String: String] = [:]) -> [String] {
        do {
            _ = try NodeConfig.parse(text, source: "test.toml", environment: env)
            return []
        } catch let e as ConfigError {
            return e.problems
        } catch {
            return ["\(error)"]
        }
    }

    @Test func exampleConfigIsValidOnceTheDevBrokerFilesExist() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        var text = try String(contentsOf: root.appendingPathComponent("config/fem-client.example.toml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "var/dev-broker/ca.pem", with: "\(Self.dir)/ca.pem")
            .replacingOccurrences(of: "var/dev-broker/node.pem", with: "\(Self.dir)/c.pem")
            .replacingOccurrences(of: "var/dev-broker/node.key", with: "\(Self.dir)/c.key")
        let c = try NodeConfig.parse(text, source: "example", environment: ["FEM_BROKER_PASSWORD": "pw"])
        #expect(c.nodeID == "dev-node")
        #expect(c.enabledLaunchers == ["docker"], "the example enables docker only")
        #expect(c.workDir.hasPrefix("/"))
        #expect(try c.endpoint().description == "amqps://dev-node@localhost:5671/%2f", "the node's own account")
        #expect(c.orchestrators == ["fem-orchestrator"])
        #expect(c.reporterMaxEventsPerTask == 1000 && c.reporterMaxEventBytesPerTask == 1 << 20)
    }

    @Test func defaultsApply() throws {
        let c = try NodeConfig.parse(Self.toml(), source: "t", environment: [:])
        #expect(c.maxConcurrentTasks == 2 && c.heartbeatSeconds == 30 && c.prefetch == 16)
        #expect(c.brokerPassword == nil)
        #expect(c.enabledLaunchers.isEmpty, "with no launchers.enabled key no launcher runs")
        #expect(c.envAllowed.isEmpty && c.flower.allowedSuperlinks.isEmpty && !c.flower.allowSourceBuilds)
        // Egress is denied until the administrator lists destinations.
        #expect(c.gitAllowedURLs.isEmpty && c.fileAllowedURLs.isEmpty && c.outputAllowedURLs.isEmpty)
        #expect(c.journalKeepDays == 30 && c.maxStageInFileMB == 1024)
    }

    @Test func hostLaunchersNeedAnAllowlistOfAbsolutePaths() throws {
        #expect(Self.problems(Self.toml("[launchers]\nenabled = [\"process\"]")) == [
            "launchers.process.allowed_executables: must list the absolute paths of the programs host-process tasks "
                + "may run while \"process\" is in launchers.enabled",
        ])
        #expect(Self.problems(Self.toml("[launchers]\nenabled = [\"process\"]\n[launchers.process]\n"
                                        + "allowed_executables = [\"/bin/sh\", \"python3\", \"usr/bin/perl\"]")) == [
            "launchers.process.allowed_executables: \"python3\" is not an absolute path",
            "launchers.process.allowed_executables: \"usr/bin/perl\" is not an absolute path",
        ])
        #expect(Self.problems(Self.toml("[launchers]\nenabled = [\"process\"]"),
                              env: ["FEM_LAUNCHERS_PROCESS_ALLOWED_EXECUTABLES": "/bin/sh"]).isEmpty)
        #expect(Self.problems(Self.toml("[launchers]\nenabled = [\"flower\"]\n[launchers.flower]\npython = \"python3\""))
                == ["launchers.flower.python: \"python3\" is not an absolute path (the interpreter Flower environments "
                    + "are made from, e.g. /usr/bin/python3)"])
        let c = try NodeConfig.parse(Self.toml("""
            [launchers]
            enabled = ["process", "flower"]
            env_allowed = ["OMP_NUM_THREADS", "MYTOOL_*"]
            [launchers.process]
            allowed_executables = ["/bin/sh"]
            [launchers.flower]
            allowed_superlinks = ["SuperLink.example.org:9092", "[::1]:9092"]
            allow_source_builds = true
            """), source: "t", environment: [:])
        #expect(c.processAllowedExecutables == ["/bin/sh"] && c.envAllowed == ["OMP_NUM_THREADS", "MYTOOL_*"])
        #expect(c.flower.allowedSuperlinks.map(\.description) == ["superlink.example.org:9092", "[::1]:9092"])
        #expect(c.flower.allowSourceBuilds)
        #expect(Self.problems(Self.toml("[launchers.flower]\nallowed_superlinks = [\"https://x.org:9092\", \"x.org\"]"))
                == ["launchers.flower.allowed_superlinks: \"https://x.org:9092\" is not host:port (e.g. "
                    + "\"superlink.example.org:9092\" or \"[2001:db8::1]:9092\")",
                    "launchers.flower.allowed_superlinks: \"x.org\" is not host:port (e.g. "
                    + "\"superlink.example.org:9092\" or \"[2001:db8::1]:9092\")"])
        #expect(Self.problems(Self.toml("[launchers]\nenabled = []\nenv_allowed = [\"A B\"]"))
                == ["launchers.env_allowed: \"A B\" is not a variable name (or NAME_PREFIX*)"])
    }

    @Test func urlAllowlistEntriesMustParse() {
        let p = Self.problems(Self.toml() + "\n[stage_in]\ngit_allowed_urls = [\"https://\", \"https://u:p@h/\"]\n"
                              + "[outputs]\nallowed_urls = [\"ftp://h/\"]\n")
        #expect(p.contains("stage_in.git_allowed_urls: \"https://\" has no host"), "\(p)")
        #expect(p.contains("outputs.allowed_urls: \"ftp://h/\" uses the scheme \"ftp\"; only https://, http://, git://, "
                           + "file:// are supported"), "\(p)")
    }

    @Test func credentialsMustListWhereTheyMayBeSent() throws {
        let secret = "\(Self.dir)/secret"
        try "s3cret\n".write(toFile: secret, atomically: true, encoding: .utf8)
        let missing = Self.problems(Self.toml() + "\n[credentials.up]\nusername = \"u\"\npassword_file = \"\(secret)\"\n")
        #expect(missing.count == 1 && missing.first?.hasPrefix("credentials.\"up\".urls: is required") == true, "\(missing)")
        let bad = Self.problems(Self.toml() + "\n[credentials.up]\ntoken_file = \"\(secret)\"\nurls = [\"https://\"]\n")
        #expect(bad == ["credentials.\"up\".urls: \"https://\" has no host"], "\(bad)")
        let c = try NodeConfig.parse(Self.toml() + "\n[credentials.up]\ntoken_file = \"\(secret)\"\n"
                                     + "urls = [\"https://fem.example.org/uploads/\"]\n", source: "t", environment: [:])
        let up = try #require(c.credentials["up"])
        #expect(up.urls.allows(try ParsedURL.parse("https://fem.example.org/uploads/x")))
        #expect(!up.urls.allows(try ParsedURL.parse("https://fem.example.org.evil.net/uploads/x")))
    }

    @Test func unknownKeyIsNamed() {
        #expect(Self.problems(Self.toml("max_concurent_tasks = 3")) == [
            "node.max_concurent_tasks: is not a known key (known keys are listed in config/fem-client.example.toml)",
        ])
    }

    @Test func badValuesAreNamedAllAtOnce() {
        let p = Self.problems(Self.toml("max_concurrent_tasks = 0\nheartbeat_interval = \"often\""))
        #expect(p.contains("node.max_concurrent_tasks: 0 is out of range (1…1024)"))
        #expect(p.contains("node.heartbeat_interval: expected an integer, got string"))
    }

    @Test func environmentOverridesTheFile() throws {
        let c = try NodeConfig.parse(Self.toml(), source: "t", environment: [
            "FEM_BROKER_URL": "amqps://other@broker.example:5999/prod", "FEM_NODE_MAX_CONCURRENT_TASKS": "7",
            "FEM_LAUNCHERS_ENABLED": "docker", "FEM_BROKER_PASSWORD": "pw",
        ])
        #expect(c.maxConcurrentTasks == 7)
        let e = try c.endpoint()
        #expect(e.host == "broker.example" && e.port == 5999 && e.vhost == "prod" && e.user == "other")
        #expect(e.password == "pw")
        #expect(!e.description.contains("pw"))
        #expect(Self.problems(Self.toml(), env: ["FEM_NODE_MAX_CONCURRENT_TASKS": "many"])
                == ["node.max_concurrent_tasks (from FEM_NODE_MAX_CONCURRENT_TASKS): \"many\" is not an integer"])
    }

    @Test func capacityIsTheHostsUnlessCappedAndBadValuesAreNamed() throws {
        let host = HostCapacity.of(try NodeConfig.parse(Self.toml(), source: "t", environment: [:]))
        #expect(host.cpus > 0 && host.memoryMB > 0 && host.gpus == 0, "\(host)")
        let text = Self.toml() + "\n[node.capacity]\ncpus = 2\nmemory_mb = 4000\ngpus = 1\nstorage_mb = 500\n"
        let capped = try NodeConfig.parse(text, source: "t", environment: ["FEM_NODE_CAPACITY_GPUS": "3"])
        #expect(HostCapacity.of(capped) == Capacity(cpus: 2, memoryMB: 4000, gpus: 3, storageMB: 500))
        #expect(Self.problems(Self.toml() + "\n[node.capacity]\ncpus = 0\ngpus = -1\n")
                == ["node.capacity.cpus: 0 is out of range (1…65536)", "node.capacity.gpus: -1 is out of range (0…1024)"])
        #expect(Self.problems(Self.toml() + "\n[node.capacity]\ncpu = 2\n").contains { $0.contains("node.capacity.cpu") })
    }

    @Test func brokerURLMustBeTLSAndCarryNoPassword() {
        #expect(Self.problems(Self.toml(broker: "url = \"amqp://fem@localhost:5672/\"")).first?
            .contains("only TLS is supported") == true)
        let p = Self.problems(Self.toml(broker: "url = \"amqps://fem:hunter2@localhost/\""))
        #expect(p.first?.contains("must not contain a password") == true)
        #expect(!p.joined().contains("hunter2"))
    }

    @Test func unknownLauncherAndMissingFilesAreNamed() {
        let p = Self.problems(Self.toml("[launchers]\nenabled = [\"kubernetes\"]").replacingOccurrences(of: "c.key", with: "nope.key"))
        #expect(p.contains { $0.hasPrefix("launchers.enabled: \"kubernetes\" is not a launcher this build has") })
        #expect(p.contains { $0.hasPrefix("broker.key_file: cannot read") })
    }

    @Test func localCommandsDoNotNeedTheBrokerFiles() throws {
        let text = Self.toml().replacingOccurrences(of: "\(Self.dir)/c.key", with: "/nonexistent/c.key")
        #expect(Self.problems(text).contains { $0.hasPrefix("broker.key_file: cannot read") })
        let c = try NodeConfig.parse(text, source: "t", environment: [:], brokerFiles: false)
        #expect(c.nodeID == "n1")
    }

    @Test func datasetsNeedAnAbsoluteExistingPath() throws {
        let ok = try NodeConfig.parse(Self.toml() + "\n[datasets.cohort-a]\npath = \"\(Self.dir)\"\nlabels = { kind = \"csv\" }",
                                      source: "t", environment: [:])
        #expect(ok.datasets["cohort-a"] == NodeConfig.Dataset(path: Self.dir, labels: ["kind": "csv"]))
        let p = Self.problems(Self.toml() + "\n[datasets.b]\npath = \"relative\"\ncolour = 1")
        #expect(p.contains("datasets.b.path: is required and must be an absolute path"))
        #expect(p.contains("datasets.b.colour: is not a known key (path, labels)"))
    }

    @Test func orchestratorsMustNameAccounts() {
        #expect(Self.problems(Self.toml("", broker: "url = \"amqps://n@localhost:5671/%2f\"\norchestrators = []"))
            .contains { $0.hasPrefix("broker.orchestrators: is empty") })
        #expect(Self.problems(Self.toml("", broker: "url = \"amqps://n@localhost:5671/%2f\"\norchestrators = [\"a b\"]"))
            .contains { $0.hasPrefix("broker.orchestrators: \"a b\" is not a broker account name") })
    }
}


/// Secrets, types, unknown keys and values in the typed configuration: every problem names its key, secrets come
/// from the injected environment only.
struct NodeConfigTypedTests {
    static func toml(_ extra: String) -> String { NodeConfigTests.toml() + "\n" + extra }

    @Test func passwordEnvAndTokenEnvResolveFromTheInjectedEnvironment() throws {
        let text = Self.toml("""
            [credentials.git]
            token_env = "FEM_TEST_GIT_TOKEN"
            urls = ["https://git.example.org/team/"]
            [credentials.up]
            username = "uploader"
            password_env = "FEM_TEST_UP_PASSWORD"
            urls = ["https://fem.example.org/uploads/"]
            [registries."127.0.0.1:5000"]
            username = "puller"
            password_env = "FEM_TEST_REGISTRY_PASSWORD"
            """)
        let env = ["FEM_TEST_GIT_TOKEN": "tok-123", "FEM_TEST_UP_PASSWORD": "pw-456",
                   "FEM_TEST_REGISTRY_PASSWORD": "pw-789"]
        let c = try NodeConfig.parse(text, source: "t", environment: env)
        let git = try #require(c.credentials["git"])
        #expect(git.username == nil && git.secret == "tok-123")
        let up = try #require(c.credentials["up"])
        #expect(up.username == "uploader" && up.secret == "pw-456")
        #expect(c.registries["127.0.0.1:5000"] == Credential(username: "puller", secret: "pw-789"))
    }

    @Test func aMissingSecretVariableNamesTheCredentialAndTheVariableNeverAValue() throws {
        // HOME is set in the test process but not in the injected environment: it must not be read.
        let text = Self.toml("""
            [credentials.git]
            token_env = "FEM_TEST_GIT_TOKEN"
            urls = ["https://git.example.org/team/"]
            [credentials.home]
            username = "u"
            password_env = "HOME"
            urls = ["https://git.example.org/team/"]
            [registries."127.0.0.1:5000"]
            username = "puller"
            password_env = "FEM_TEST_REGISTRY_PASSWORD"
            """)
        let env = ["FEM_TEST_OTHER": "hunter2", "FEM_TEST_REGISTRY_PASSWORD": ""]
        let p = NodeConfigTests.problems(text, env: env)
        #expect(p == ["registries.\"127.0.0.1:5000\".password_env: FEM_TEST_REGISTRY_PASSWORD is not set",
                      "credentials.\"git\".token_env: FEM_TEST_GIT_TOKEN is not set",
                      "credentials.\"home\".password_env: HOME is not set"], "\(p)")
        #expect(!p.joined().contains("hunter2"))
        // Local commands never send anything: they do not need the secrets.
        let local = try NodeConfig.parse(text, source: "t", environment: env, brokerFiles: false)
        #expect(local.credentials["git"]?.secret == "")
    }

    @Test func typeErrorsNameTheirKeyAndWhatWasFound() {
        let p = NodeConfigTests.problems(NodeConfigTests.toml("name = 5\nmax_concurrent_tasks = \"two\"") + """

            [launchers]
            enabled = "docker"
            [launchers.docker]
            allow_gpus = "yes"
            [stage_in]
            file_allowed_urls = ["https://a.example/", "https://b.example/", 3]
            [credentials.x]
            username = 5
            password_file = "/nonexistent"
            urls = ["https://a.example/"]
            reporter = 3
            """, env: ["FEM_OUTPUTS_HOLD_LOGS": "maybe"])
        let expected = [
            "node.name: expected a string, got integer",
            "node.max_concurrent_tasks: expected an integer, got string",
            "launchers.enabled: expected an array of strings, got string",
            "launchers.docker.allow_gpus: expected true or false, got string",
            "stage_in.file_allowed_urls[2]: expected a string, got integer",
            "credentials.\"x\".username: expected a string, got integer",
            "outputs.hold_logs (from FEM_OUTPUTS_HOLD_LOGS): \"maybe\" is not true or false",
        ]
        for e in expected { #expect(p.contains(e), "\(e) missing from \(p)") }
        // `reporter = 3` under [credentials.x] is a key of that credential, named as such.
        #expect(p.contains { $0.hasPrefix("credentials.\"x\".reporter: is not a known key") }, "\(p)")
        for text in p {
            #expect(!text.contains("DecodingError") && !text.contains("codingPath") && !text.contains("CodingKeys"),
                    "\(text)")
        }
    }

    @Test func aSectionThatIsNotATableIsNamed() {
        let p = NodeConfigTests.problems("reporter = 3\n" + NodeConfigTests.toml())
        #expect(p == ["reporter: expected a table ([reporter]), got integer"], "\(p)")
    }

    @Test func unknownKeysAreNamedWhereverTheyAre() {
        let p = NodeConfigTests.problems("colour = 1\n" + NodeConfigTests.toml() + """

            [launchers.docker]
            sockett = "/run/docker.sock"
            [launchers.kubernetes]
            partition = "x"
            [credentials.up]
            token_file = "/nonexistent"
            urls = ["https://a.example/"]
            colour = "blue"
            [registries."h:5000"]
            username = "u"
            password_file = "/nonexistent"
            token_env = "T"
            """, env: [:])
        let known = "is not a known key (known keys are listed in config/fem-client.example.toml)"
        for e in ["colour: \(known)", "launchers.docker.sockett: \(known)", "launchers.kubernetes.partition: \(known)",
                  "credentials.\"up\".colour: is not a known key (username, password_file, password_env, token_file, "
                  + "token_env, urls)",
                  "registries.\"h:5000\".token_env: is not a known key (username, password_file, password_env)"] {
            #expect(p.contains(e), "\(e) missing from \(p)")
        }
    }

    @Test func badValuesNameTheirKey() {
        let p = NodeConfigTests.problems(Self.toml("""
            [sandboxes]
            keep_failed_hours = -1
            [stage_in]
            file_allowed_urls = ["https://ok.example/", "ftp://h/"]
            """), env: ["FEM_BROKER_PREFETCH": "0"])
        #expect(p.contains("sandboxes.keep_failed_hours: -1 is out of range (0…87600)"), "\(p)")
        #expect(p.contains("broker.prefetch: 0 is out of range (1…65535)"), "\(p)")
        #expect(p.contains { $0.hasPrefix("stage_in.file_allowed_urls: \"ftp://h/\"") }, "\(p)")
    }

    @Test func requiredKeysNameTheirOverride() {
        let p = NodeConfigTests.problems("[broker]\nurl = \"amqps://n@localhost/\"\n", env: [:])
        for k in ["node.id", "broker.ca_file", "broker.cert_file", "broker.key_file"] {
            #expect(p.contains("\(k): is required (or set FEM_\(k.replacingOccurrences(of: ".", with: "_").uppercased()))"),
                    "\(k) missing from \(p)")
        }
        #expect(NodeConfigTests.problems("", env: ["FEM_NODE_ID": "n1", "FEM_BROKER_URL": "amqps://n@localhost/",
                                                   "FEM_BROKER_CA_FILE": "\(NodeConfigTests.dir)/ca.pem",
                                                   "FEM_BROKER_CERT_FILE": "\(NodeConfigTests.dir)/c.pem",
                                                   "FEM_BROKER_KEY_FILE": "\(NodeConfigTests.dir)/c.key"]).isEmpty,
                "a node configured from the environment alone")
    }
}
