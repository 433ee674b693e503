import Crypto
import FEMCore
import FEMSystem
import Foundation

/// Ed25519 keys for signed plans, in the PEM forms openssl reads and writes: a private key is PKCS#8
/// (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519` writes it), a public key is SPKI
/// (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes it). Ed25519's DER forms are a fixed prefix and
/// the 32 key bytes, so they are checked byte for byte; anything else is refused, saying what was expected.
public enum SigningKeys {
    /// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
    /// OCTET STRING { OCTET STRING (32 bytes) } }.
    static let privatePrefix: [UInt8] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
                                         0x04, 0x22, 0x04, 0x20]
    /// SPKI `SubjectPublicKeyInfo` for Ed25519: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (32 bytes) }.
    static let publicPrefix: [UInt8] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]

    public struct KeyError: Error, CustomStringConvertible, Sendable {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// `key_id`: 16 hex digits, the first 8 bytes of the SHA-256 of the raw 32-byte public key.
    public static func keyID(publicKey raw: [UInt8]) -> String {
        var h = FEMCore.SHA256()
        h.update(raw)
        return String(h.finalizeHex().prefix(16))
    }

    // MARK: DER and PEM

    /// The SPKI DER of a raw public key (its base64 is what `[trust.keys.<name>] public_key` holds).
    public static func publicDER(_ raw: [UInt8]) -> [UInt8] { publicPrefix + raw }
    public static func privateDER(_ raw: [UInt8]) -> [UInt8] { privatePrefix + raw }

    public static func publicPEM(_ raw: [UInt8]) -> String { pem("PUBLIC KEY", publicDER(raw)) }
    public static func privatePEM(_ raw: [UInt8]) -> String { pem("PRIVATE KEY", privateDER(raw)) }

    static func pem(_ label: String, _ der: [UInt8]) -> String {
        let b64 = Data(der).base64EncodedString()
        var lines: [String] = []
        var rest = Substring(b64)
        while !rest.isEmpty {
            lines.append(String(rest.prefix(64)))
            rest = rest.dropFirst(64)
        }
        return "-----BEGIN \(label)-----\n" + lines.joined(separator: "\n") + "\n-----END \(label)-----\n"
    }

    /// The raw 32-byte public key from SPKI DER.
    public static func publicKey(der: [UInt8]) throws -> [UInt8] {
        try unwrap(der, prefix: publicPrefix, what: "an Ed25519 public key",
                   expected: "SubjectPublicKeyInfo DER of 44 bytes starting 302a300506032b6570032100 (as `openssl pkey "
                       + "-pubout` writes for an ed25519 key)")
    }

    /// The raw 32-byte private key (seed) from PKCS#8 DER.
    public static func privateKey(der: [UInt8]) throws -> [UInt8] {
        try unwrap(der, prefix: privatePrefix, what: "an Ed25519 private key",
                   expected: "PKCS#8 DER of 48 bytes starting 302e020100300506032b657004220420 (as `openssl genpkey "
                       + "-algorithm ed25519` writes)")
    }

    static func unwrap(_ der: [UInt8], prefix: [UInt8], what: String, expected: String) throws -> [UInt8] {
        guard der.count == prefix.count + 32, Array(der.prefix(prefix.count)) == prefix else {
            let start = der.prefix(prefix.count).map { String(format: "%02x", $0) }.joined()
            throw KeyError("not \(what): \(der.count) bytes starting \(start.isEmpty ? "(nothing)" : start); expected "
                           + expected)
        }
        return Array(der.suffix(32))
    }

    /// A public key from its config form: the base64 of the SPKI DER (a PEM body; whitespace ignored), or a whole
    /// PEM text.
    public static func publicKey(text: String) throws -> [UInt8] {
        if text.contains("-----BEGIN") { return try publicKey(der: pemBody(text, label: "PUBLIC KEY")) }
        let compact = text.filter { !$0.isWhitespace }
        guard let data = Data(base64Encoded: compact) else {
            throw KeyError("not an Ed25519 public key: not base64 (expected the base64 of its SubjectPublicKeyInfo "
                           + "DER, the body of a -----BEGIN PUBLIC KEY----- file)")
        }
        return try publicKey(der: Array(data))
    }

    /// The DER inside one PEM block labelled `label`.
    public static func pemBody(_ text: String, label: String) throws -> [UInt8] {
        let begin = "-----BEGIN \(label)-----", end = "-----END \(label)-----"
        guard let b = text.range(of: begin), let e = text.range(of: end, range: b.upperBound..<text.endIndex) else {
            let found = text.range(of: #"-----BEGIN [A-Z0-9 ]+-----"#, options: .regularExpression).map { String(text[$0]) }
            throw KeyError("expected a \(begin) block" + (found.map { ", found \($0)" } ?? ", found no PEM block"))
        }
        let body = text[b.upperBound..<e.lowerBound].filter { !$0.isWhitespace }
        guard let data = Data(base64Encoded: String(body)) else {
            throw KeyError("the \(begin) block is not valid base64")
        }
        return Array(data)
    }

    // MARK: Files

    /// The raw private key from a PKCS#8 PEM file; a file others may read is refused (the key signs as its owner).
    public static func readPrivateKey(_ path: String) throws -> [UInt8] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KeyError("\(path): cannot read it as text (a PEM file)")
        }
        let raw: [UInt8]
        do {
            raw = try privateKey(der: pemBody(text, label: "PRIVATE KEY"))
        } catch let e as KeyError {
            throw KeyError("\(path): \(e.description)")
        }
        let status: FileStatus
        do {
            status = try Posix.stat(path)
        } catch {
            throw KeyError("\(path): \(error)")
        }
        if status.permissions & 0o077 != 0 {
            throw KeyError("\(path): mode \(String(status.permissions & 0o777, radix: 8)) lets others read the private "
                           + "key; chmod 600 \(path)")
        }
        return raw
    }

    /// The raw public key from a SPKI PEM file (a private key file is refused: it does not belong on a node).
    public static func readPublicKey(_ path: String) throws -> [UInt8] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KeyError("\(path): cannot read it as text (a PEM file)")
        }
        do {
            if text.contains("-----BEGIN PRIVATE KEY-----") {
                throw KeyError("is a private key, which never belongs here; give its public key (`fem-client keys show "
                               + "FILE` or `openssl pkey -in FILE -pubout` prints it)")
            }
            return try publicKey(der: pemBody(text, label: "PUBLIC KEY"))
        } catch let e as KeyError {
            throw KeyError("\(path): \(e.description)")
        }
    }

    /// Writes `text` to a new file with `mode`; an existing file is never replaced.
    public static func writeNew(_ path: String, _ text: String, mode: mode_t) throws {
        let fd: Int32
        do {
            fd = try Posix.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode)
        } catch let e as SystemError where e.errno == EEXIST {
            throw KeyError("\(path): exists already; not replaced (remove it, or choose another --out)")
        }
        do {
            try Posix.fchmod(fd, mode: mode, path: path)  // the umask may have taken bits away; adds none to a key
            try Array(text.utf8).withUnsafeBytes { try Posix.writeAll(fd, $0, path: path) }
        } catch {
            Posix.release(fd)
            throw error
        }
        try Posix.close(fd, path: path)
    }

    // MARK: Signing

    public static func generate() -> [UInt8] {
        Array(Curve25519.Signing.PrivateKey().rawRepresentation)
    }

    public static func publicKey(fromPrivate raw: [UInt8]) throws -> [UInt8] {
        do {
            return Array(try Curve25519.Signing.PrivateKey(rawRepresentation: raw).publicKey.rawRepresentation)
        } catch {
            throw KeyError("not an Ed25519 private key: \(error)")
        }
    }

    public static func sign(_ message: [UInt8], privateKey raw: [UInt8]) throws -> [UInt8] {
        do {
            let key = try Curve25519.Signing.PrivateKey(rawRepresentation: raw)
            return Array(try key.signature(for: message))
        } catch {
            throw KeyError("cannot sign: \(error)")
        }
    }

    public static func verify(_ signature: [UInt8], of message: [UInt8], publicKey raw: [UInt8]) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else { return false }
        return key.isValidSignature(signature, for: message)
    }

    /// A plan document with its `signature` member set (an existing one replaced): signed over
    /// `PlanIdentity.signedBytes`, which leaves `signature` out.
    public static func sign(plan document: JSONValue, privateKey raw: [UInt8], signer: String? = nil) throws
        -> (document: JSONValue, signature: PlanSignature) {
        guard case .object(var members) = document else { throw KeyError("a plan document is a JSON object") }
        let publicKey = try publicKey(fromPrivate: raw)
        let value = try sign(PlanIdentity.signedBytes(document), privateKey: raw)
        let signature = PlanSignature(keyID: keyID(publicKey: publicKey), value: value, signer: signer)
        members[PlanIdentity.signatureMember] = signature.json
        return (.object(members), signature)
    }
}
