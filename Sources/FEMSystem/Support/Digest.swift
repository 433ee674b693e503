import CCrypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 through OpenSSL (hardware-accelerated where the CPU can). Incremental: feed bytes as they stream by.
public final class SHA256Digest {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The digest as lowercase hex. The digest cannot be updated afterwards.
    public func finalizeHex() -> String {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &out, &length)
        return out.prefix(Int(length)).map { String(format: "%02x", $0) }.joined()
    }

    /// The size and SHA-256 of a file, read in 1 MiB blocks.
    public static func file(_ path: String) throws -> (size: Int64, sha256: String) {
        let fd = try Posix.open(path, O_RDONLY)
        defer { Posix.release(fd) }
        do {
            return try descriptor(fd)
        } catch let e as SystemError {
            throw SystemError(e.call, errno: e.errno, path)
        }
    }

    /// The size and SHA-256 of what `fd` holds from its offset on, read in 1 MiB blocks. `each` sees every block
    /// before it is hashed (to copy what is hashed, from the same read) and may throw to stop.
    public static func descriptor(_ fd: Int32, each: (UnsafeRawBufferPointer) throws -> Void = { _ in })
        throws -> (size: Int64, sha256: String) {
        let digest = SHA256Digest()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var size: Int64 = 0
        while true {
            let n = try Posix.read(fd, into: buffer, path: nil)
            if n == 0 { break }
            let block = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            size += Int64(n)
            try each(block)
            digest.update(block)
        }
        return (size, digest.finalizeHex())
    }
}
