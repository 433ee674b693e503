@testable import FEMNode
import FEMCore
import Foundation
import Testing

/// Signed plans without a daemon: the keys' PEM forms (and their interoperation with the real `openssl`), the
/// signature policy's verdicts, and the `[trust]` config's checks.
@Suite(.serialized)
struct SignedPlanKeyTests {
    static let dir: String = {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("fem-sign-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static let plan: JSONValue = .object([
        "schema_version": 1, "id": "signed-tool", "version": "1.2", "launcher": "process",
        "description": "Zürich – €, \"quoted\"", "timeout_seconds": 60,
        "command": .object(["base": .array(["/bin/echo", "hello"]), "args": .array([])]),
        "resources": .object(["cpus": .double(0.5)]),
    ])

    /// `openssl` with `args`; its output, or a failure naming the command and what it said.
    @discardableResult
    static func openssl(_ args: [String], input: [UInt8]? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        try #require(p.terminationStatus == 0, "openssl \(args.joined(separator: " ")) failed: \(text)")
        return text
    }

    static func write(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = "\(dir)/\(name)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    // MARK: keys

    @Test func pemRoundTripsAndKeyID() throws {
        let raw = SigningKeys.generate()
        #expect(raw.count == 32)
        let pub = try SigningKeys.publicKey(fromPrivate: raw)
        let privatePEM = SigningKeys.privatePEM(raw)
        #expect(privatePEM.hasPrefix("-----BEGIN PRIVATE KEY-----\n") && privatePEM.hasSuffix("-----END PRIVATE KEY-----\n"))
        #expect(try SigningKeys.privateKey(der: SigningKeys.pemBody(privatePEM, label: "PRIVATE KEY")) == raw)
        let publicPEM = SigningKeys.publicPEM(pub)
        #expect(try SigningKeys.publicKey(der: SigningKeys.pemBody(publicPEM, label: "PUBLIC KEY")) == pub)
        // The config form: the PEM body (base64 of the SPKI DER), whitespace and all, or the whole PEM.
        let body = Data(SigningKeys.publicDER(pub)).base64EncodedString()
        #expect(body.hasPrefix("MCowBQYDK2VwAyEA"))
        #expect(try SigningKeys.publicKey(text: body) == pub)
        #expect(try SigningKeys.publicKey(text: publicPEM) == pub)
        // key id: the first 8 bytes of sha256(raw public key), 16 hex digits.
        var h = FEMCore.SHA256()
        h.update(pub)
        #expect(SigningKeys.keyID(publicKey: pub) == String(h.finalizeHex().prefix(16)))
        #expect(Patterns.matches(PlanSignature.keyIDPattern, SigningKeys.keyID(publicKey: pub)))
    }

    @Test func otherKeyFormsAreRefusedNamingWhatWasExpected() throws {
        // A P-256 public key (SPKI) and key: the right PEM label, the wrong algorithm.
        let ecKey = "\(Self.dir)/ec.key"
        try Self.openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ecKey])
        let ecPub = try Self.openssl(["pkey", "-in", ecKey, "-pubout"])
        do {
            _ = try SigningKeys.publicKey(text: ecPub)
            Issue.record("a P-256 key was taken for an Ed25519 key")
        } catch {
            #expect("\(error)".hasPrefix("not an Ed25519 public key: 91 bytes starting "), "\(error)")
            #expect("\(error)".contains("expected SubjectPublicKeyInfo DER of 44 bytes starting 302a300506032b6570032100"))
        }
        chmod(ecKey, 0o600)
        #expect(throws: SigningKeys.KeyError.self) { try SigningKeys.readPrivateKey(ecKey) }
        do {
            _ = try SigningKeys.readPrivateKey(ecKey)
        } catch {
            #expect("\(error)".contains("not an Ed25519 private key"), "\(error)")
            #expect("\(error)".contains("expected PKCS#8 DER of 48 bytes starting 302e020100300506032b657004220420"))
        }
        // Not base64; a public key where a private one belongs and the reverse.
        #expect(throws: SigningKeys.KeyError.self) { try SigningKeys.publicKey(text: "not*base64") }
        do {
            _ = try SigningKeys.pemBody(ecPub, label: "PRIVATE KEY")
            Issue.record("a public key PEM was read as a private key")
        } catch {
            #expect("\(error)" == "expected a -----BEGIN PRIVATE KEY----- block, found -----BEGIN PUBLIC KEY-----")
        }
        let priv = try Self.write(Array(SigningKeys.privatePEM(SigningKeys.generate()).utf8), "node-side.key")
        do {
            _ = try SigningKeys.readPublicKey(priv)
            Issue.record("a private key was taken as a public key file")
        } catch {
            #expect("\(error)".contains("is a private key, which never belongs here"), "\(error)")
        }
    }

    @Test func privateKeysAreWritten0600AndNeverOverwrittenAndMustStayPrivate() throws {
        let path = "\(Self.dir)/new.key"
        let raw = SigningKeys.generate()
        try SigningKeys.writeNew(path, SigningKeys.privatePEM(raw), mode: 0o600)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try SigningKeys.readPrivateKey(path) == raw)
        do {
            try SigningKeys.writeNew(path, SigningKeys.privatePEM(SigningKeys.generate()), mode: 0o600)
            Issue.record("an existing key was replaced")
        } catch {
            #expect("\(error)".contains("exists already; not replaced"), "\(error)")
        }
        #expect(try SigningKeys.readPrivateKey(path) == raw)
        chmod(path, 0o644)
        do {
            _ = try SigningKeys.readPrivateKey(path)
            Issue.record("a world-readable private key was used")
        } catch {
            #expect("\(error)".contains("mode 644 lets others read the private key"), "\(error)")
        }
    }

    // MARK: openssl interop

    /// A key made by `openssl genpkey` signs with `fem-client sign`'s logic; `openssl pkeyutl -verify -rawin`
    /// verifies that signature over the plan's canonical bytes, and our key id is that of openssl's public key.
    @Test func opensslKeySignsAndOpensslVerifiesOurSignature() throws {
        let keyPath = "\(Self.dir)/openssl.key", pubPath = "\(Self.dir)/openssl.pub"
        try Self.openssl(["genpkey", "-algorithm", "ed25519", "-out", keyPath])
        try Self.openssl(["pkey", "-in", keyPath, "-pubout", "-out", pubPath])
        chmod(keyPath, 0o600)
        let raw = try SigningKeys.readPrivateKey(keyPath)
        let signed = try SigningKeys.sign(plan: Self.plan, privateKey: raw, signer: "Alice")
        let pub = try SigningKeys.readPublicKey(pubPath)
        #expect(pub == (try SigningKeys.publicKey(fromPrivate: raw)))
        #expect(signed.signature.keyID == SigningKeys.keyID(publicKey: pub))
        // What openssl verifies: the canonical form without `signature`, and the 64 bytes.
        let message = try Self.write(PlanIdentity.signedBytes(signed.document), "plan.canonical")
        let sig = try Self.write(signed.signature.value, "plan.sig")
        let out = try Self.openssl(["pkeyutl", "-verify", "-pubin", "-inkey", pubPath, "-rawin", "-in", message,
                                    "-sigfile", sig])
        #expect(out.contains("Signature Verified Successfully"))
        // The signed document reads back as a plan with that signature, and the node's policy admits it.
        let read = try DocumentReader.readPlan(signed.document)
        #expect(read.signature == signed.signature && read.signature?.signer == "Alice")
        let policy = SignaturePolicy(requireSigned: true, keys: [TrustedKey(name: "alice", publicKey: pub)])
        #expect(try policy.admit(read, taskID: "t").get().signer == "alice")
    }

    /// The reverse: our key file is read by openssl, whose signature over the canonical bytes we verify.
    @Test func ourKeyFileSignsWithOpensslAndWeVerify() throws {
        let raw = SigningKeys.generate()
        let keyPath = "\(Self.dir)/ours.key"
        try SigningKeys.writeNew(keyPath, SigningKeys.privatePEM(raw), mode: 0o600)
        let pub = try SigningKeys.publicKey(fromPrivate: raw)
        // openssl derives the same public key from our PKCS#8 file.
        #expect(try Self.openssl(["pkey", "-in", keyPath, "-pubout"]) == SigningKeys.publicPEM(pub))
        let bytes = PlanIdentity.signedBytes(Self.plan)
        let message = try Self.write(bytes, "ours.canonical")
        let sigPath = "\(Self.dir)/ours.sig"
        try Self.openssl(["pkeyutl", "-sign", "-rawin", "-inkey", keyPath, "-in", message, "-out", sigPath])
        let sig = Array(try Data(contentsOf: URL(fileURLWithPath: sigPath)))
        #expect(sig.count == 64)
        #expect(SigningKeys.verify(sig, of: bytes, publicKey: pub))
        // Put into the plan by hand, as another tool would: the node's policy verifies it.
        guard case .object(var members) = Self.plan else { return }
        members["signature"] = PlanSignature(keyID: SigningKeys.keyID(publicKey: pub), value: sig).json
        let read = try DocumentReader.readPlan(.object(members))
        let policy = SignaturePolicy(requireSigned: true, keys: [TrustedKey(name: "bob", publicKey: pub)])
        #expect(try policy.admit(read, taskID: "t").get().signer == "bob")
    }

    // MARK: policy

    @Test func policyVerdicts() throws {
        let alice = SigningKeys.generate(), mallory = SigningKeys.generate()
        let alicePub = try SigningKeys.publicKey(fromPrivate: alice)
        let keys = [TrustedKey(name: "alice", publicKey: alicePub)]
        let aliceID = SigningKeys.keyID(publicKey: alicePub)
        let malloryID = SigningKeys.keyID(publicKey: try SigningKeys.publicKey(fromPrivate: mallory))
        let unsigned = try DocumentReader.readPlan(Self.plan)
        let bySomeone = try DocumentReader.readPlan(SigningKeys.sign(plan: Self.plan, privateKey: mallory).document)
        let good = try SigningKeys.sign(plan: Self.plan, privateKey: alice).document
        guard case .object(var changed) = good else { return }
        changed["timeout_seconds"] = 61
        let altered = try DocumentReader.readPlan(.object(changed))
        let required = SignaturePolicy(requireSigned: true, keys: keys)
        let optional = SignaturePolicy(requireSigned: false, keys: keys)

        func reason(_ r: Result<TrustVerdict, PolicyDecline>) -> String? {
            if case .failure(let d) = r { return d.reason }
            return nil
        }
        #expect(reason(required.admit(unsigned, taskID: "t")) == "plan signed-tool 1.2 is not signed, and this node "
                + "requires signed plans (trust.require_signed_plans)")
        #expect(try optional.admit(unsigned, taskID: "t").get() == TrustVerdict())
        #expect(reason(required.admit(bySomeone, taskID: "t")) == "plan signed-tool 1.2 is signed by key id \(malloryID), "
                + "which this node does not trust (trusted keys: alice (key id \(aliceID)))")
        let unverified = try optional.admit(bySomeone, taskID: "t").get()
        #expect(unverified.signer == nil)
        #expect(unverified.eventData["signature"] == .string("not verified: signed by key id \(malloryID), which this "
                                                             + "node does not know"))
        // A changed plan under a trusted key's id: refused whether or not signatures are required.
        let forged = "plan signed-tool 1.2: its signature does not verify with trusted key alice (key id \(aliceID)): the "
            + "plan was changed after it was signed, or the signature is not this key's"
        #expect(reason(required.admit(altered, taskID: "t")) == forged)
        #expect(reason(optional.admit(altered, taskID: "t")) == forged)
        let verdict = try optional.admit(try DocumentReader.readPlan(good), taskID: "t").get()
        #expect(verdict.signer == "alice")
        #expect(verdict.eventData["signed_by"] == .string("alice"))
        #expect(verdict.eventData["plan_sha256"] == .string(PlanIdentity.hash(Self.plan)))
        // Combined with another policy, the signer and the event data come through.
        let combined = CombinedPlanTrust([OpenPlanTrust(), required])
        #expect(try combined.admit(try DocumentReader.readPlan(good), taskID: "t").get().signer == "alice")
        // A signature's member changes nothing in the hash a registry approves.
        #expect(PlanIdentity.hash(good) == PlanIdentity.hash(Self.plan))
    }

    @Test func malformedSignatureIsRefusedByTheReaderNamingTheField() throws {
        guard case .object(var members) = Self.plan else { return }
        members["signature"] = .object(["algorithm": "ed25519", "key_id": "0123456789abcdef",
                                        "value": .string(Data(repeating: 1, count: 63).base64EncodedString())])
        do {
            _ = try DocumentReader.readPlan(.object(members))
            Issue.record("a 63-byte signature was accepted")
        } catch let e as ValidationError {
            #expect(e.issues.map(\.description) == ["plan.signature.value: expected base64 of 64 bytes (an Ed25519 "
                                                    + "signature)"])
        }
    }

    // MARK: config

    static func config(_ trust: String) -> String {
        """
        [node]
        id = "n1"
        [broker]
        url = "amqps://n1@localhost:5671/%2f"
        ca_file = "\(dir)/ca.pem"
        cert_file = "\(dir)/c.pem"
        key_file = "\(dir)/c.key"
        orchestrators = ["orch"]
        \(trust)
        """
    }

    static func problems(_ trust: String) -> [String] {
        do {
            _ = try NodeConfig.parse(config(trust), source: "t", environment: [:], brokerFiles: false)
            return []
        } catch let e as ConfigError {
            return e.problems
        } catch {
            return ["\(error)"]
        }
    }

    @Test func trustConfigReadsKeysAndNamesEveryProblem() throws {
        let a = try SigningKeys.publicKey(fromPrivate: SigningKeys.generate())
        let b = try SigningKeys.publicKey(fromPrivate: SigningKeys.generate())
        let pubFile = try Self.write(Array(SigningKeys.publicPEM(b).utf8), "bob.pub")
        let aText = Data(SigningKeys.publicDER(a)).base64EncodedString()
        let good = try NodeConfig.parse(Self.config("""
            [trust]
            require_signed_plans = true
            [trust.keys.alice]
            public_key = "\(aText)"
            [trust.keys.bob]
            public_key_file = "\(pubFile)"
            """), source: "t", environment: [:], brokerFiles: false)
        #expect(good.trust.requireSignedPlans)
        #expect(good.trust.keys == [TrustedKey(name: "alice", publicKey: a), TrustedKey(name: "bob", publicKey: b)])
        // Off by default; no section at all is fine.
        #expect(try NodeConfig.parse(Self.config(""), source: "t", environment: [:], brokerFiles: false).trust == TrustConfig())

        #expect(Self.problems("[trust]\nrequire_signed_plans = true") == [
            "trust.require_signed_plans: is true but no [trust.keys.<name>] is configured, so no plan could run; add the "
                + "public keys of the authors you trust (fem-client keys generate prints the lines)"])
        let bad = Self.problems("""
            [trust]
            require_signed_plans = "yes"
            [trust.keys.alice]
            public_key = "MCowBQYDK2VwAyEA"
            [trust.keys.carol]
            public_key = "\(aText)"
            colour = "red"
            [trust.keys.dave]
            public_key = "\(aText)"
            [trust.keys.erin]
            public_key = "\(aText)"
            public_key_file = "\(pubFile)"
            [trust.keys.frank]
            public_key_file = "\(Self.dir)/missing.pub"
            """)
        #expect(bad.contains("trust.require_signed_plans: expected true or false, got string"), "\(bad)")
        #expect(bad.contains { $0.hasPrefix("trust.keys.alice.public_key: not an Ed25519 public key: 12 bytes starting ") },
                "\(bad)")
        #expect(bad.contains("trust.keys.carol.colour: is not a known key (public_key, public_key_file)"), "\(bad)")
        #expect(bad.contains("trust.keys.dave: has the same key (key id \(SigningKeys.keyID(publicKey: a))) as "
                             + "trust.keys.carol; list a key once"), "\(bad)")
        #expect(bad.contains { $0.hasPrefix("trust.keys.erin: needs exactly one of public_key") }, "\(bad)")
        #expect(bad.contains { $0.hasPrefix("trust.keys.frank.public_key_file: \(Self.dir)/missing.pub: cannot read") },
                "\(bad)")
        #expect(!bad.contains { $0.contains("is not a known key (known keys") }, "\(bad)")
        // The override applies like every key's.
        let env = try NodeConfig.parse(Self.config("[trust.keys.alice]\npublic_key = \"\(aText)\""), source: "t",
                                       environment: ["FEM_TRUST_REQUIRE_SIGNED_PLANS": "true"], brokerFiles: false)
        #expect(env.trust.requireSignedPlans)
    }
}
