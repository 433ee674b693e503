import FEMCore
import FEMNode
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Signed plans through the real daemon and broker (`[trust]`): a node that requires signatures declines an
/// unsigned plan, a plan signed by a key it does not trust and a plan changed after it was signed, each saying
/// why, and runs a correctly signed plan, naming its signer in the `running` event. A forged signature under a
/// trusted key's id is declined even where signatures are not required; a config reload changes the trusted keys.
@Suite(.serialized)
struct SignedPlanTests {
    static func keyPair() throws -> (private: [UInt8], public: [UInt8], id: String) {
        let raw = SigningKeys.generate()
        let pub = try SigningKeys.publicKey(fromPrivate: raw)
        return (raw, pub, SigningKeys.keyID(publicKey: pub))
    }

    static func trust(require: Bool, keys: [(String, [UInt8])]) -> String {
        var s = TestNode.hostProcesses + "\n[trust]\nrequire_signed_plans = \(require)\n"
        for (name, pub) in keys {
            s += "[trust.keys.\(name)]\npublic_key = \"\(Data(SigningKeys.publicDER(pub)).base64EncodedString())\"\n"
        }
        return s
    }

    /// A task running `/bin/echo <word>`, its plan signed with `key` (unsigned when nil).
    static func task(_ word: String, signedWith key: [UInt8]? = nil) throws -> [String: JSONValue] {
        var t = Tasks.task(["/bin/echo", word])
        if let key, let plan = t["plan"] {
            t["plan"] = try SigningKeys.sign(plan: plan, privateKey: key, signer: "someone").document
        }
        return t
    }

    /// The plan's command changed by one byte after it was signed (the signature left as it was).
    static func altered(_ t: [String: JSONValue]) -> [String: JSONValue] {
        var t = t
        guard case .object(var plan)? = t["plan"], case .object(var command)? = plan["command"] else { return t }
        command["base"] = .array(["/bin/echo", "signeD"])
        plan["command"] = .object(command)
        t["plan"] = .object(plan)
        return t
    }

    static func reason(_ op: Operator, _ t: [String: JSONValue]) -> String {
        op.finalState(of: Tasks.id(t))?.detail.message ?? ""
    }

    static func expectDeclined(_ op: Operator, _ node: TestNode, _ t: [String: JSONValue], _ message: String) {
        let states = op.events(of: Tasks.id(t)).filter { $0.kind == .state }.map(\.state)
        #expect(states == [.received, .declined], "\(Tasks.id(t)): \(states)")
        #expect(reason(op, t) == message)
        // Declined before anything of the plan ran: no sandbox was made.
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(t))"))
    }

    @Test func requiredSignaturesDeclineUnsignedUnknownAndAlteredPlansAndRunASignedOne() throws {
        let alice = try Self.keyPair(), mallory = try Self.keyPair()
        let node = try TestNode("signed", extra: Self.trust(require: true, keys: [("alice", alice.public)]))
        try node.start()
        let op = try Operator(node: node)
        let unsigned = try Self.task("signed")
        let unknown = try Self.task("signed", signedWith: mallory.private)
        let changed = Self.altered(try Self.task("signed", signedWith: alice.private))
        let good = try Self.task("signed", signedWith: alice.private)
        // Signed by a trusted key, but its code comes from a branch: what runs is not what was signed.
        var branch = Tasks.task(["/bin/echo", "signed"])
        if case .object(var plan)? = branch["plan"] {
            plan["source"] = ["git": ["url": "git://127.0.0.1:19418/tool.git", "ref": "main"]]
            branch["plan"] = try SigningKeys.sign(plan: .object(plan), privateKey: alice.private, signer: "someone").document
        }
        let all = [unsigned, unknown, changed, good, branch]
        for t in all { try op.submit(t) }
        try op.waitForFinal(all.map(Tasks.id))

        Self.expectDeclined(op, node, unsigned, "plan test-tool 1.0 is not signed, and this node requires signed plans "
                            + "(trust.require_signed_plans)")
        Self.expectDeclined(op, node, unknown, "plan test-tool 1.0 is signed by key id \(mallory.id), which this node does "
                            + "not trust (trusted keys: alice (key id \(alice.id)))")
        Self.expectDeclined(op, node, changed, "plan test-tool 1.0: its signature does not verify with trusted key alice "
                            + "(key id \(alice.id)): the plan was changed after it was signed, or the signature is not "
                            + "this key's")
        Self.expectDeclined(op, node, branch, "plan test-tool 1.0 is signed by alice, but plan.source.git has no commit "
                            + "(ref main is whatever the server holds at run time): pin the reviewed commit in `commit`; "
                            + "this node requires signed plans (trust.require_signed_plans), and a moving source is not "
                            + "what was signed")
        #expect(op.finalState(of: Tasks.id(good))?.state == .completed, "\(Self.reason(op, good))")
        let running = try #require(op.events(of: Tasks.id(good)).first { $0.kind == .state && $0.state == .running })
        #expect(running.detail.data?["signed_by"] == .string("alice"))
        #expect(running.detail.data?["key_id"] == .string(alice.id))
        let plan = try #require(good["plan"])
        #expect(running.detail.data?["plan_sha256"] == .string(PlanIdentity.hash(plan)))
        #expect(node.log.contains("task=\(Tasks.id(unknown)) declined: plan test-tool 1.0 is signed by key id"))
        // The wire protocol with signatures is version 3, as the heartbeat says.
        try op.waitFor("a heartbeat", timeout: 15) { _ in !op.heartbeats.isEmpty }
        #expect(op.heartbeats.last?.protocolVersion == 3)
    }

    @Test func aForgedSignatureIsDeclinedEvenWhenSignaturesAreNotRequired() throws {
        let alice = try Self.keyPair(), mallory = try Self.keyPair()
        let node = try TestNode("signed-opt", extra: Self.trust(require: false, keys: [("alice", alice.public)]))
        try node.start()
        let op = try Operator(node: node)
        let forged = Self.altered(try Self.task("signed", signedWith: alice.private))
        // Mallory's signature under Alice's key id: not Alice's signature.
        var impostor = try Self.task("signed", signedWith: mallory.private)
        if case .object(var plan)? = impostor["plan"], case .object(var sig)? = plan["signature"] {
            sig["key_id"] = .string(alice.id)
            plan["signature"] = .object(sig)
            impostor["plan"] = .object(plan)
        }
        let unknown = try Self.task("signed", signedWith: mallory.private)
        let unsigned = try Self.task("signed")
        let all = [forged, impostor, unknown, unsigned]
        for t in all { try op.submit(t) }
        try op.waitForFinal(all.map(Tasks.id))

        let why = "plan test-tool 1.0: its signature does not verify with trusted key alice (key id \(alice.id)): the "
            + "plan was changed after it was signed, or the signature is not this key's"
        Self.expectDeclined(op, node, forged, why)
        Self.expectDeclined(op, node, impostor, why)
        // Not required: an unknown key's plan and an unsigned plan run; the event says the first was not verified.
        #expect(op.finalState(of: Tasks.id(unknown))?.state == .completed, "\(Self.reason(op, unknown))")
        #expect(op.finalState(of: Tasks.id(unsigned))?.state == .completed, "\(Self.reason(op, unsigned))")
        let running = try #require(op.events(of: Tasks.id(unknown)).first { $0.kind == .state && $0.state == .running })
        #expect(running.detail.data?["signature"] == .string("not verified: signed by key id \(mallory.id), which this "
                                                             + "node does not know"))
        #expect(running.detail.data?["signed_by"] == nil)
        let plainRun = op.events(of: Tasks.id(unsigned)).first { $0.kind == .state && $0.state == .running }
        #expect(plainRun?.detail.data?["signed_by"] == nil && plainRun?.detail.data?["signature"] == nil)
    }

    /// SIGHUP reads `[trust]` again: a key removed from the config no longer signs for this node.
    @Test func aConfigReloadChangesTheTrustedKeys() throws {
        let alice = try Self.keyPair(), bob = try Self.keyPair()
        let node = try TestNode("signed-reload", extra: Self.trust(require: true, keys: [("alice", alice.public)]))
        try node.start()
        let op = try Operator(node: node)
        let before = try Self.task("signed", signedWith: alice.private)
        try op.submit(before)
        try op.waitForFinal([Tasks.id(before)])
        #expect(op.finalState(of: Tasks.id(before))?.state == .completed, "\(Self.reason(op, before))")

        // `fem-client check` says what the node trusts.
        let check = try node.run(["check"])
        #expect(check.output.contains("ok    plans must be signed by: alice (key id \(alice.id)) (trust)"), "\(check.output)")

        // Rotation: Bob's key replaces Alice's.
        let aliceLine = Data(SigningKeys.publicDER(alice.public)).base64EncodedString()
        let bobLine = Data(SigningKeys.publicDER(bob.public)).base64EncodedString()
        try node.editConfig {
            $0.replacingOccurrences(of: "[trust.keys.alice]", with: "[trust.keys.bob]")
                .replacingOccurrences(of: aliceLine, with: bobLine)
        }
        let reloadsBefore = node.log.components(separatedBy: "config reloaded from").count
        let pid = try #require(node.pid)
        Glibc.kill(pid, SIGHUP)
        try eventually("the config reload", timeout: 20) {
            node.log.components(separatedBy: "config reloaded from").count > reloadsBefore
        }
        #expect(node.log.contains("trust changed"), "\(node.log.suffix(600))")
        let byAlice = try Self.task("signed", signedWith: alice.private)
        let byBob = try Self.task("signed", signedWith: bob.private)
        try op.submit(byAlice)
        try op.submit(byBob)
        try op.waitForFinal([Tasks.id(byAlice), Tasks.id(byBob)])
        Self.expectDeclined(op, node, byAlice, "plan test-tool 1.0 is signed by key id \(alice.id), which this node does "
                            + "not trust (trusted keys: bob (key id \(bob.id)))")
        #expect(op.finalState(of: Tasks.id(byBob))?.state == .completed, "\(Self.reason(op, byBob))")
    }

    /// The author's commands refuse what would weaken a signature: a private key others can read, a key file of
    /// another kind, an existing key file, an invalid plan; `verify` says why a changed plan fails (exit 2).
    @Test func theSigningCommandsRefuseWithReasons() throws {
        let dir = try TestEnv.scratch("signing-cli-\(UUID().uuidString.prefix(6))")
        let bin = try TestEnv.binary("fem-client")
        func run(_ args: [String]) throws -> (status: Int32, output: String) {
            try Shell.run([bin] + args, cwd: dir)
        }
        let made = try run(["keys", "generate", "--out", "alice"])
        #expect(made.status == 0, "\(made.output)")
        let id = try SigningKeys.keyID(publicKey: SigningKeys.readPublicKey("\(dir)/alice.pub"))
        #expect(made.output.contains("key id       \(id)") && made.output.contains("[trust.keys.alice]\npublic_key = \"MCowBQYDK2VwAyEA"))
        let again = try run(["keys", "generate", "--out", "alice"])
        #expect(again.status == 1 && again.output.contains("alice.key exists already; not replaced"), "\(again.output)")

        let plan = "\(TestEnv.repoRoot)/docs/templates/examples/hello-process.plan.json"
        let signed = try run(["sign", plan, "--key", "alice.key", "--out", "signed.json"])
        #expect(signed.status == 0 && signed.output.contains("key id       \(id)"), "\(signed.output)")
        let ok = try run(["verify", "signed.json", "--public-key", "alice.pub"])
        #expect(ok.status == 0 && ok.output.contains("signature verifies with trusted key alice"), "\(ok.output)")

        // Signing again replaces the signature: Bob's now, not Alice's.
        #expect(try run(["keys", "generate", "--out", "bob"]).status == 0)
        let resigned = try run(["sign", "signed.json", "--key", "bob.key", "--out", "bob-signed.json"])
        #expect(resigned.status == 0, "\(resigned.output)")
        #expect(try run(["verify", "bob-signed.json", "--public-key", "bob.pub"]).status == 0)
        let notAlice = try run(["verify", "bob-signed.json", "--public-key", "alice.pub"])
        #expect(notAlice.status == 2 && notAlice.output.contains("which this node does not trust (trusted keys: alice"),
                "\(notAlice.output)")
        let longName = try run(["sign", plan, "--key", "alice.key", "--out", "x.json", "--signer", "a\u{7}b"])
        #expect(longName.status == 2 && longName.output.contains("--signer: at most 256 characters, no control characters"),
                "\(longName.output)")

        // One value changed after signing.
        let text = try String(contentsOfFile: "\(dir)/signed.json", encoding: .utf8)
        try text.replacingOccurrences(of: "\"timeout_seconds\" : 60", with: "\"timeout_seconds\" : 6000")
            .write(toFile: "\(dir)/changed.json", atomically: true, encoding: .utf8)
        let changed = try run(["verify", "changed.json", "--public-key", "alice.pub"])
        #expect(changed.status == 2 && changed.output.contains("does not verify with trusted key alice (key id \(id)): the "
                                                                + "plan was changed after it was signed"), "\(changed.output)")
        let unsigned = try run(["verify", plan, "--public-key", "alice.pub"])
        #expect(unsigned.status == 2 && unsigned.output.contains("is not signed"), "\(unsigned.output)")

        // A private key others may read is not used.
        chmod("\(dir)/alice.key", 0o644)
        let open = try run(["sign", plan, "--key", "alice.key", "--out", "x.json"])
        #expect(open.status == 2 && open.output.contains("mode 644 lets others read the private key"), "\(open.output)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/x.json"))
        // The public key where the private one belongs.
        let wrong = try run(["sign", plan, "--key", "alice.pub", "--out", "x.json"])
        #expect(wrong.status == 2 && wrong.output.contains("expected a -----BEGIN PRIVATE KEY----- block, found -----BEGIN "
                                                            + "PUBLIC KEY-----"), "\(wrong.output)")
        // An invalid plan is not signed.
        try #"{"schema_version": 1, "id": "Bad"}"#.write(toFile: "\(dir)/bad.json", atomically: true, encoding: .utf8)
        chmod("\(dir)/alice.key", 0o600)
        let bad = try run(["sign", "bad.json", "--key", "alice.key"])
        #expect(bad.status == 2 && bad.output.contains("not a valid plan, so not signed") && bad.output.contains("plan.id"),
                "\(bad.output)")
    }

    /// A `[trust]` the node cannot honour stops it at start, naming the key: a key that is not Ed25519, and
    /// `require_signed_plans` with no key at all.
    @Test func aBrokenTrustConfigStopsTheDaemonNamingTheKey() throws {
        let node = try TestNode("signed-badconf", extra: TestNode.hostProcesses + """

            [trust]
            require_signed_plans = true
            [trust.keys.alice]
            public_key = "MCowBQYDK2VwAyEA"
            """)
        let daemon = try Shell.run([try TestEnv.binary("fem-client"), "daemon", "--config", node.configPath])
        #expect(daemon.status == 2, "\(daemon.output)")
        #expect(daemon.output.contains("trust.keys.alice.public_key: not an Ed25519 public key: 12 bytes starting "
                                       + "302a300506032b6570032100; expected SubjectPublicKeyInfo DER of 44 bytes"),
                "\(daemon.output)")
        try node.editConfig { $0.replacingOccurrences(of: "[trust.keys.alice]\npublic_key = \"MCowBQYDK2VwAyEA\"", with: "") }
        let check = try node.run(["check"])
        #expect(check.status != 0 && check.output.contains("trust.require_signed_plans: is true but no "
                                                           + "[trust.keys.<name>] is configured"), "\(check.output)")
    }
}
