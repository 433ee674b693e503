import ArgumentParser
import FEMCore
import Foundation

/// The author's side of signed plans (docs/templates/README.md, "Signing a plan"): make a key pair, sign a plan,
/// check a signature as a node would.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Make and show Ed25519 keys for signing plans.",
        subcommands: [Generate.self, Show.self])

    struct Generate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a key pair: NAME.key (private, PKCS#8 PEM, mode 0600) and NAME.pub (public, SPKI PEM).")
        @Option(help: "The files' path without extension: NAME.key and NAME.pub (neither may exist).") var out: String

        func run() async throws {
            let keyPath = "\(out).key", pubPath = "\(out).pub"
            for path in [keyPath, pubPath] where FileManager.default.fileExists(atPath: path) {
                throw CommandFailure("\(path) exists already; not replaced (remove it, or choose another --out)")
            }
            let raw = SigningKeys.generate()
            do {
                let publicKey = try SigningKeys.publicKey(fromPrivate: raw)
                try SigningKeys.writeNew(keyPath, SigningKeys.privatePEM(raw), mode: 0o600)
                try SigningKeys.writeNew(pubPath, SigningKeys.publicPEM(publicKey), mode: 0o644)
                let name = URL(fileURLWithPath: out).lastPathComponent
                let tomlName = Patterns.matches(#"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#, name) && !name.contains(".")
                    ? name : "author"
                print("private key  \(keyPath) (keep it secret: it signs as you)")
                print("public key   \(pubPath)")
                print("key id       \(SigningKeys.keyID(publicKey: publicKey))")
                print("")
                print("For the node config of each site that trusts this key:")
                print("[trust.keys.\(tomlName)]")
                print("public_key = \"\(Data(SigningKeys.publicDER(publicKey)).base64EncodedString())\"")
            } catch {
                throw CommandFailure("\(error)")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a key file's key id and public key (a private key file shows its public half).")
        @Argument(help: "A PEM key file (NAME.key or NAME.pub, or one openssl made).") var file: String

        func run() async throws {
            let publicKey: [UInt8]
            let kind: String
            do {
                let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
                if text.contains("-----BEGIN PRIVATE KEY-----") {
                    publicKey = try SigningKeys.publicKey(fromPrivate: SigningKeys.readPrivateKey(file))
                    kind = "private key (Ed25519)"
                } else {
                    publicKey = try SigningKeys.readPublicKey(file)
                    kind = "public key (Ed25519)"
                }
            } catch {
                throw CommandFailure.invalid("\(error)")
            }
            print("file         \(file): \(kind)")
            print("key id       \(SigningKeys.keyID(publicKey: publicKey))")
            print("public_key   \(Data(SigningKeys.publicDER(publicKey)).base64EncodedString())")
            print(SigningKeys.publicPEM(publicKey), terminator: "")
        }
    }
}

struct SignCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign a plan: adds its \"signature\" (an existing one is replaced) over its canonical form.")
    @Argument(help: "A plan file (*.plan.json).") var plan: String
    @Option(help: "The private key (PKCS#8 PEM, as `keys generate` or `openssl genpkey -algorithm ed25519` writes).")
    var key: String
    @Option(help: "Where to write the signed plan (default: over PLAN).") var out: String?
    @Option(help: "The author's name, carried as signature.signer (informational: nodes name keys from their config).")
    var signer: String?

    func run() async throws {
        var document = try DocumentFile.load(plan)
        // An existing signature is replaced, whatever it was.
        if case .object(var members) = document {
            members[PlanIdentity.signatureMember] = nil
            document = .object(members)
        }
        let parsed = try DocumentFile.plan(document, file: plan, why: "not a valid plan, so not signed (`fem-client "
                                           + "validate` lists the problems)")
        let signed: (document: JSONValue, signature: PlanSignature)
        do {
            signed = try SigningKeys.sign(plan: document, privateKey: SigningKeys.readPrivateKey(key), signer: signer)
        } catch {
            throw CommandFailure.invalid("\(error)")
        }
        // The result must read back as the same plan: what is signed is what a node will check.
        guard (try? DocumentReader.readPlan(signed.document))?.signature == signed.signature else {
            throw CommandFailure.invalid("--signer: at most 256 characters, no control characters")
        }
        let target = out ?? plan
        let encoder = JSONEncoder.fem
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            var data = try encoder.encode(signed.document)
            // What is written must read back to the bytes that were signed (numbers and strings as they were).
            guard let back = try? JSONValue.parse(data), PlanIdentity.signedBytes(back) == PlanIdentity.signedBytes(document)
            else {
                throw CommandFailure("the signed plan does not read back to the canonical form that was signed; not written")
            }
            data.append(0x0A)
            try data.write(to: URL(fileURLWithPath: target), options: .atomic)
        } catch let e as CommandFailure {
            throw e
        } catch {
            throw CommandFailure("\(target): cannot write (\(error.localizedDescription))")
        }
        print("signed plan \(parsed.id) \(parsed.version) → \(target)")
        print("key id       \(signed.signature.keyID)")
        print("plan sha256  \(PlanIdentity.hash(document))")
    }
}

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a plan's signature as a node would: with the node's [trust.keys] or one public key.")
    @Argument(help: "A signed plan file.") var plan: String
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("public-key"), help: "Trust only this public key file (SPKI PEM) instead.")
    var publicKey: String?

    func run() async throws {
        let document = try DocumentFile.load(plan)
        let parsed = try DocumentFile.plan(document, file: plan, why: "not a valid plan")
        let keys: [TrustedKey]
        let source: String
        if let publicKey {
            do {
                keys = [TrustedKey(name: URL(fileURLWithPath: publicKey).deletingPathExtension().lastPathComponent,
                                   publicKey: try SigningKeys.readPublicKey(publicKey))]
            } catch {
                throw CommandFailure.invalid("\(error)")
            }
            source = publicKey
        } else {
            keys = try options.loadConfig(brokerFiles: false).trust.keys
            source = "\(options.config) [trust.keys]"
        }
        guard let signature = parsed.signature else {
            throw CommandFailure.invalid("plan \(parsed.id) \(parsed.version) is not signed (no \"signature\")")
        }
        // Required: a key this check does not know is a failure here, whatever a node's policy would do.
        switch SignaturePolicy(requireSigned: true, keys: keys).admit(parsed, taskID: "verify") {
        case .failure(let decline):
            throw CommandFailure.invalid(decline.reason)
        case .success(let verdict):
            print("plan \(parsed.id) \(parsed.version): signature verifies with trusted key \(verdict.signer ?? "?") "
                  + "(key id \(signature.keyID), from \(source))")
            if let claimed = signature.signer { print("signer (as written, not verified)  \(claimed)") }
            print("plan sha256  \(PlanIdentity.hash(document))")
        }
    }
}
