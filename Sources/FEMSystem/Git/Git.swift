import CGit2
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A git operation failed. The message names the URL and what went wrong, never a password.
public struct GitError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case credentialsRejected   // the server refused the login (or asked for one and there was none)
        case tls                   // certificate verification failed
        case notFound              // no such repository, ref or commit
        case network               // could not connect, or the transfer broke
        case other
    }
    public var code: Code
    public var message: String
    public var description: String { message }
}

/// A login for an https remote. A secret: never described.
public struct GitLogin: Sendable, CustomStringConvertible {
    public var username: String
    public var password: String
    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }
    public var description: String { "GitLogin(\(username), ***)" }
}

/// What a fetch brought.
public struct GitFetchResult: Sendable, Equatable {
    public var cloned: Bool
    public var receivedObjects: Int
    public var receivedBytes: Int
}

/// Bare repository caches and checkouts through libgit2. A cache is a bare repository whose branches and tags
/// mirror the remote's (`refs/heads/*`, `refs/tags/*`), plus the remote's HEAD as `refs/fem/remote-head`.
/// Callers serialize work on one cache (see `FileLock`); different caches may be used from different threads.
public enum Git {
    private static let setup: Void = {
        _ = git_libgit2_init()
        // A checkout out of the cache reads every blob; re-hashing each (SHA-1 with collision detection) was the
        // redundant part of a stage-in next to `git clone`. The fetch still verifies what it receives.
        _ = fem_git_disable_read_hash_verification()
    }()

    /// Trust `file` (a PEM bundle) and/or the certificates in `directory` for https remotes. Process-wide.
    public static func useCertificateAuthorities(file: String?, directory: String?) throws {
        _ = setup
        try check(fem_git_set_ssl_cert_locations(file, directory), "cannot load the git CA certificates")
    }

    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, rev: Int32 = 0
        _ = git_libgit2_version(&major, &minor, &rev)
        return "\(major).\(minor).\(rev)"
    }

    /// Clones `url` into the bare repository at `path` on first use, fetches on later uses. The credentials
    /// callback answers once: a refused login fails at once instead of being asked again on every 401.
    /// A set `cancel` stops the transfer at its next progress callback (libgit2 calls them as data arrives).
    public static func fetch(url: String, into path: String, login: GitLogin?, cancel: CancelFlag? = nil) throws
        -> GitFetchResult {
        _ = setup
        var repo: OpaquePointer?
        var remote: OpaquePointer?
        defer {
            git_remote_free(remote)
            git_repository_free(repo)
        }
        let cloned = !FileManager.default.fileExists(atPath: "\(path)/HEAD")
        if cloned {
            try? FileManager.default.removeItem(atPath: path)  // a clone that broke half-way
            try check(git_repository_init(&repo, path, 1), "cannot create the git cache \(path)")
            try check(git_remote_create_with_fetchspec(&remote, repo, "origin", url, "+refs/heads/*:refs/heads/*"),
                      "cannot add the remote \(url)")
        } else {
            try check(git_repository_open_bare(&repo, path), "cannot open the git cache \(path)")
            try check(git_remote_lookup(&remote, repo, "origin"), "the git cache \(path) has no remote")
        }

        final class Payload {
            let login: GitLogin?
            let cancel: CancelFlag?
            var asked = 0
            init(_ login: GitLogin?, _ cancel: CancelFlag?) {
                self.login = login
                self.cancel = cancel
            }
        }
        let payload = Payload(login, cancel)
        let unmanaged = Unmanaged.passRetained(payload)
        defer { unmanaged.release() }

        var options = git_fetch_options()
        try check(git_fetch_options_init(&options, UInt32(GIT_FETCH_OPTIONS_VERSION)), "git fetch options")
        options.prune = GIT_FETCH_PRUNE
        options.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE  // tags come through the explicit refspec
        // libgit2 follows an off-site redirect of the first request (/info/refs) by default; the URL given here is
        // the one an allowlist checked, so no redirect is followed at any stage.
        options.follow_redirects = GIT_REMOTE_REDIRECT_NONE
        options.callbacks.payload = unmanaged.toOpaque()
        options.callbacks.credentials = { out, _, usernameFromURL, allowed, raw in
            let payload = Unmanaged<Payload>.fromOpaque(raw!).takeUnretainedValue()
            payload.asked += 1
            guard let login = payload.login, payload.asked == 1,
                  allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue != 0 else { return GIT_EUSER.rawValue }
            _ = usernameFromURL
            return git_credential_userpass_plaintext_new(out, login.username, login.password)
        }

        // Returning an error from a progress callback stops the fetch.
        options.callbacks.transfer_progress = { _, raw in
            Unmanaged<Payload>.fromOpaque(raw!).takeUnretainedValue().cancel?.isCancelled == true ? GIT_EUSER.rawValue : 0
        }
        options.callbacks.sideband_progress = { _, _, raw in
            Unmanaged<Payload>.fromOpaque(raw!).takeUnretainedValue().cancel?.isCancelled == true ? GIT_EUSER.rawValue : 0
        }
        options.callbacks.update_tips = { _, _, _, raw in
            Unmanaged<Payload>.fromOpaque(raw!).takeUnretainedValue().cancel?.isCancelled == true ? GIT_EUSER.rawValue : 0
        }
        if cancel?.isCancelled == true { throw OperationCancelled("git fetch \(url)") }
        let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", "+HEAD:refs/fem/remote-head"]
        let code = withCStrings(refspecs) { pointers -> Int32 in
            var array = git_strarray(strings: pointers, count: refspecs.count)
            return git_remote_fetch(remote, &array, &options, "fem-client fetch")
        }
        if code != 0 {
            if cancel?.isCancelled == true { throw OperationCancelled("git fetch \(url)") }
            if payload.asked > 0 && (code == GIT_EUSER.rawValue || code == GIT_EAUTH.rawValue) {
                let why = login == nil ? "asks for credentials and the plan names none"
                    : "refused the credentials (asked again after the first login)"
                throw GitError(code: .credentialsRejected, message: "git fetch \(url): the server \(why)")
            }
            throw error(code, "git fetch \(url)")
        }
        let stats = git_remote_stats(remote)!.pointee
        return GitFetchResult(cloned: cloned, receivedObjects: Int(stats.received_objects),
                              receivedBytes: Int(stats.received_bytes))
    }

    /// The commit id `revision` names in the cache: a branch, a tag (peeled), a full commit id, or nil for the
    /// remote's HEAD.
    public static func resolve(repository path: String, revision: String?) throws -> String {
        _ = setup
        var repo: OpaquePointer?
        defer { git_repository_free(repo) }
        try check(git_repository_open_bare(&repo, path), "cannot open the git cache \(path)")
        let candidates = revision.map { ["refs/tags/\($0)", "refs/heads/\($0)", $0] } ?? ["refs/fem/remote-head"]
        for spec in candidates {
            var object: OpaquePointer?
            guard git_revparse_single(&object, repo, spec) == 0 else { continue }
            defer { git_object_free(object) }
            var commit: OpaquePointer?
            guard git_object_peel(&commit, object, GIT_OBJECT_COMMIT) == 0 else { continue }
            defer { git_object_free(commit) }
            return oidString(git_object_id(commit))
        }
        throw GitError(code: .notFound, message: revision.map { "no branch, tag or commit \"\($0)\" in the remote" }
                       ?? "the remote has no HEAD")
    }

    /// Writes the tree of `commit` into `target` (which need not be empty: tracked files are overwritten).
    public static func checkout(repository path: String, commit: String, into target: String) throws {
        _ = setup
        var repo: OpaquePointer?
        var object: OpaquePointer?
        defer {
            git_object_free(object)
            git_repository_free(repo)
        }
        try check(git_repository_open_bare(&repo, path), "cannot open the git cache \(path)")
        try check(git_revparse_single(&object, repo, commit), "commit \(commit) is not in the cache")
        var options = git_checkout_options()
        try check(git_checkout_options_init(&options, UInt32(GIT_CHECKOUT_OPTIONS_VERSION)), "git checkout options")
        options.checkout_strategy = GIT_CHECKOUT_FORCE.rawValue | GIT_CHECKOUT_DONT_UPDATE_INDEX.rawValue
        let code = target.withCString { dir -> Int32 in
            options.target_directory = dir
            return git_checkout_tree(repo, object, &options)
        }
        try check(code, "cannot check out \(commit) into \(target)")
    }

    // MARK: - Helpers

    private static func oidString(_ oid: UnsafePointer<git_oid>?) -> String {
        var buffer = [CChar](repeating: 0, count: Int(GIT_OID_HEXSZ) + 1)
        git_oid_tostr(&buffer, buffer.count, oid)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func check(_ code: Int32, _ what: String) throws {
        if code < 0 { throw error(code, what) }
    }

    private static func error(_ code: Int32, _ what: String) -> GitError {
        let last = git_error_last()
        let detail = last?.pointee.message.map { String(cString: $0) } ?? "libgit2 error \(code)"
        let klass = last.map { Int32($0.pointee.klass) } ?? 0
        let kind: GitError.Code
        switch code {
        case GIT_ECERTIFICATE.rawValue: kind = .tls
        case GIT_ENOTFOUND.rawValue: kind = .notFound
        case GIT_EAUTH.rawValue: kind = .credentialsRejected
        default:
            if klass == Int32(GIT_ERROR_SSL.rawValue) { kind = .tls }
            else if detail.contains("404") || detail.lowercased().contains("not found")
                || detail.contains("does not appear to be a git repository") { kind = .notFound }
            else if klass == Int32(GIT_ERROR_NET.rawValue) || klass == Int32(GIT_ERROR_OS.rawValue) { kind = .network }
            else { kind = .other }
        }
        return GitError(code: kind, message: "\(what): \(detail)")
    }

    private static func withCStrings<R>(_ strings: [String],
                                        _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        let pointers = strings.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        var array = pointers
        return array.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}

/// An exclusive advisory lock on a file (flock), held until `unlock` or deinit. Serializes work on one git cache
/// between tasks and between processes.
public final class FileLock {
    private var fd: Int32

    public init(path: String) throws {
        fd = try Posix.open(path, O_CREAT | O_RDWR, mode: 0o600)
        do {
            try Posix.retrying("flock", path) { [fd] in flock(fd, LOCK_EX) }
        } catch {
            Posix.release(fd)
            fd = -1
            throw error
        }
    }

    /// Closing the descriptor releases the lock; the lock file holds nothing to lose.
    public func unlock() {
        Posix.release(fd)
        fd = -1
    }

    deinit { unlock() }
}
