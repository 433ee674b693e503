import FEMCore
import FEMSystem
import Foundation

/// What the node allows stage-in to fetch, and how.
public struct SourcePolicy: Sendable {
    /// Where a plan's git source may come from (`https://git.example.org/tools/`, `git://host/`,
    /// `file:///srv/tools/`). Empty: nowhere.
    public var gitURLs: URLPolicy
    /// Where task files may be downloaded from. Empty: nowhere.
    public var fileURLs: URLPolicy
    /// The largest task file a download may bring (bytes).
    public var maxFileBytes: Int64
    /// Must every task file carry a `sha256`?
    public var requireSHA256: Bool
    /// A private CA (PEM) for https git remotes and downloads, added to the system's.
    public var caFile: String?
    public var retry: RetryPolicy
    /// `[credentials."name"]` from the node config.
    public var credentials: [String: Credential]
    /// Bare git caches live here, one per remote URL.
    public var cacheDir: String

    public init(gitURLs: URLPolicy, fileURLs: URLPolicy, maxFileBytes: Int64 = 1 << 30, requireSHA256: Bool,
                caFile: String?, retry: RetryPolicy, credentials: [String: Credential], cacheDir: String) {
        self.gitURLs = gitURLs
        self.fileURLs = fileURLs
        self.maxFileBytes = maxFileBytes
        self.requireSHA256 = requireSHA256
        self.caFile = caFile
        self.retry = retry
        self.credentials = credentials
        self.cacheDir = cacheDir
    }
}

/// Stage-in of a plan's `source` into the sandbox's `src/`: a git checkout through a per-node cache, or task
/// files over HTTP(S) checked against their sha256. Each step is journaled (`git` → the commit, `file:<path>` →
/// its sha256), so a restarted stage-in does not clone or download again.
public struct SourceStageIn: StageIn {
    let policy: SourcePolicy

    public init(policy: SourcePolicy) throws {
        self.policy = policy
        if let ca = policy.caFile {
            try Git.useCertificateAuthorities(file: ca, directory: "/etc/ssl/certs")
        }
    }

    public func check(_ plan: ToolPlan) -> String? {
        switch plan.source {
        case nil:
            return nil
        case .git(let g)?:
            do {
                _ = try gitURL(g)
            } catch {
                return "\(error)"
            }
            return nil
        case .files(let files)?:
            for (i, f) in files.enumerated() {
                let field = "source.files[\(i)]"
                do {
                    _ = try fileURL(f, field: field)
                } catch {
                    return "\(error)"
                }
                if f.sha256 == nil && policy.requireSHA256 {
                    return "\(field).sha256: is required on this node (stage_in.require_sha256)"
                }
            }
            return nil
        }
    }

    struct Refusal: Error, CustomStringConvertible {
        var description: String
    }

    /// The git source's URL, normalised, when the node allows it (and its credentials, if any, for it). A local
    /// repository (file://) must also lie, after resolving symlinks, under the canonical path of an allowed
    /// file:// entry.
    func gitURL(_ g: GitSource) throws -> ParsedURL {
        let url: ParsedURL
        do {
            url = try policy.gitURLs.check(g.url, field: "source.git.url")
        } catch let e as ParsedURL.Problem {
            throw Refusal(description: e.description)
        }
        if url.scheme == "file" {
            guard let real = Self.realpath(url.filePath) else {
                throw Refusal(description: "source.git.url: \(url) does not exist on this node")
            }
            let roots = policy.gitURLs.entries.filter { $0.url.scheme == "file" && $0.matches(url) }
                .compactMap { Self.realpath($0.url.filePath) }
            guard roots.contains(where: { Self.isBelow(real, $0) }) else {
                throw Refusal(description: "source.git.url: \(url) resolves to \(real), which is not under an allowed "
                              + "folder (allowed: \(policy.gitURLs.listing))")
            }
        }
        if let problem = Credential.refusal(g.credentials, in: policy.credentials, url: url,
                                            field: "source.git.credentials") {
            throw Refusal(description: problem)
        }
        return url
    }

    /// A task file's URL, normalised, when the node allows it (and its credentials, if any, for it).
    func fileURL(_ f: SourceFile, field: String) throws -> ParsedURL {
        let url: ParsedURL
        do {
            url = try policy.fileURLs.check(f.url, field: "\(field).url")
        } catch let e as ParsedURL.Problem {
            throw Refusal(description: e.description)
        }
        guard url.scheme == "https" || url.scheme == "http" else {
            throw Refusal(description: "\(field).url: task files come over https:// or http://, not \(url.scheme)://")
        }
        if let problem = Credential.refusal(f.credentials, in: policy.credentials, url: url,
                                            field: "\(field).credentials") {
            throw Refusal(description: problem)
        }
        return url
    }

    static func realpath(_ path: String) -> String? {
        try? Posix.realpath(path)  // not there (or unreadable): the caller refuses the URL, naming it
    }

    /// Is `path` `root` or below it (on a path-segment boundary)?
    static func isBelow(_ path: String, _ root: String) -> Bool {
        root == "/" || path == root || path.hasPrefix(root.hasSuffix("/") ? root : root + "/")
    }

    public func stageIn(_ job: LaunchJob, reporter: StageReporter) async throws {
        switch job.task.plan.source {
        case nil: return
        case .git(let g)?: try await git(g, into: job.sandbox.src, reporter: reporter)
        case .files(let files)?: try await download(files, into: job.sandbox.src, reporter: reporter)
        }
    }

    // MARK: - Git

    private func git(_ source: GitSource, into src: String, reporter: StageReporter) async throws {
        if let done = reporter.isDone("git") {
            reporter.progress("git \(source.url) already checked out at \(done)", ["commit": .string(done)])
            return
        }
        let policy = self.policy
        // Checked again here (a symlink under a file:// root may have changed since the task was admitted); what
        // was checked, normalised, is what libgit2 gets.
        let url: String
        do {
            url = try gitURL(source).description
        } catch {
            throw TaskFailure(.stageInFailure, "\(error)")
        }
        let login = source.credentials.flatMap { policy.credentials[$0] }.map {
            GitLogin(username: $0.username ?? "token", password: $0.secret)
        }
        let urlHash = SHA256Digest()
        urlHash.update(Array(url.utf8))
        let cache = "\(policy.cacheDir)/\(urlHash.finalizeHex().prefix(32)).git"
        let commit: String = try await offload("fem-git", cancellable: { cancel in
            try FileManager.default.createDirectory(atPath: policy.cacheDir, withIntermediateDirectories: true)
            let lock = try FileLock(path: cache + ".lock")
            defer { lock.unlock() }
            if cancel.isCancelled { throw OperationCancelled("git fetch \(source.url)") }
            do {
                reporter.progress("git fetch \(url)", ["url": .string(url)])
                let started = ContinuousClock.now
                let fetched = try Git.fetch(url: url, into: cache, login: login, cancel: cancel)
                let millis = (ContinuousClock.now - started).seconds * 1000
                reporter.progress("git \(fetched.cloned ? "cloned" : "fetched") \(url): "
                                  + "\(fetched.receivedObjects) objects in \(Int(millis)) ms",
                                  ["url": .string(url), "cloned": .bool(fetched.cloned),
                                   "objects": .int(Int64(fetched.receivedObjects)),
                                   "bytes": .int(Int64(fetched.receivedBytes))])
                let resolved = try Git.resolve(repository: cache, revision: source.ref ?? source.commit)
                if let pinned = source.commit, resolved != pinned {
                    throw TaskFailure(.stageInFailure, "source.git.commit: \(source.ref.map { "ref \"\($0)\"" } ?? "the checkout") "
                                      + "is at \(resolved), not at the pinned commit \(pinned)")
                }
                if cancel.isCancelled { throw OperationCancelled("git checkout \(source.url)") }
                try Git.checkout(repository: cache, commit: resolved, into: src)
                return resolved
            } catch let e as GitError {
                throw TaskFailure(.stageInFailure, e.message)
            }
        })
        let escaping = SandboxPaths.escapingSymlinks(under: src)
        if let first = escaping.first {
            throw TaskFailure(.stageInFailure, "source.git: the repository's symlink \(first.path) points outside the "
                              + "sandbox (\(first.target)); refused" + (escaping.count > 1 ? " (and \(escaping.count - 1) more)" : ""))
        }
        reporter.markDone("git", commit)
        reporter.progress("git \(url) checked out at \(commit)",
                          ["url": .string(url), "commit": .string(commit)])
    }

    // MARK: - Files

    private func download(_ files: [SourceFile], into src: String, reporter: StageReporter) async throws {
        for (i, file) in files.enumerated() {
            let step = "file:\(file.path)"
            let field = "source.files[\(i)]"
            if let done = reporter.isDone(step), FileManager.default.fileExists(atPath: "\(src)/\(file.path)") {
                reporter.progress("\(file.path) already downloaded (sha256 \(done))", ["path": .string(file.path)])
                continue
            }
            let dest: String
            do {
                dest = try SandboxPaths.prepareFile(root: src, relative: file.path)
            } catch let e as TaskFailure {
                throw TaskFailure(.stageInFailure, "\(field).\(e.message)")
            }
            let policy = self.policy
            let url: String
            do {
                url = try fileURL(file, field: field).description
            } catch {
                throw TaskFailure(.stageInFailure, "\(error)")
            }
            let auth = file.credentials.flatMap { policy.credentials[$0] }?.authorization
            let result: (sha: String, bytes: Int64) = try await offload("fem-download", cancellable: { cancel in
                try policy.retry.run(retryable: RetryPolicy.transient, waiting: { attempt, pause, error in
                    reporter.progress("\(field): attempt \(attempt) failed (\(error)); trying again in \(pause)",
                                      ["path": .string(file.path), "attempt": .int(Int64(attempt))])
                }, cancel: cancel) {
                    try Self.fetchFile(url, to: dest, authorization: auth, caFile: policy.caFile,
                                       maxBytes: policy.maxFileBytes, field: field, cancel: cancel)
                }
            })
            if let expected = file.sha256, expected != result.sha {
                try? FileManager.default.removeItem(atPath: dest)
                throw TaskFailure(.stageInFailure, "\(field).sha256: checksum mismatch for \(file.path): expected "
                                  + "\(expected), got \(result.sha)")
            }
            reporter.markDone(step, result.sha)
            reporter.progress("downloaded \(file.path): \(result.bytes) bytes, sha256 \(result.sha)",
                              ["path": .string(file.path), "bytes": .int(result.bytes), "sha256": .string(result.sha)])
        }
    }

    /// One GET, streamed to `<dest>.part` and hashed on the way, renamed into place on a 200.
    static func fetchFile(_ url: String, to dest: String, authorization: String?, caFile: String?, maxBytes: Int64,
                          field: String, cancel: CancelFlag? = nil) throws -> (sha: String, bytes: Int64) {
        let partial = dest + ".part"
        let fd: Int32
        do {
            fd = try Posix.open(partial, O_CREAT | O_TRUNC | O_WRONLY | O_NOFOLLOW, mode: 0o640)
        } catch {
            throw TaskFailure(.stageInFailure, "\(field): cannot create the download: \(error)")
        }
        let hasher = SHA256Digest()
        var bytes: Int64 = 0
        var writeFailed: SystemError?
        var request = HTTPRequest(method: "GET", url: url, headers: authorization.map { [("Authorization", $0)] } ?? [],
                                  timeoutSeconds: 0, caFile: caFile)
        request.stallSeconds = 60
        request.maxBodyBytes = maxBytes
        request.protocols = url.hasPrefix("https://") ? "https" : "http"
        request.cancel = cancel
        let response: HTTPResponse
        do {
            response = try HTTPTransfer.perform(request) { chunk in
                hasher.update(chunk)
                bytes += Int64(chunk.count)
                do {
                    try FileWriter.writeAll(fd, chunk, context: partial)
                } catch {
                    writeFailed = error as? SystemError
                    return false
                }
                return true
            }
        } catch let e as HTTPError {
            Posix.release(fd)  // the download failed: what close says of the partial file no longer matters
            try? FileManager.default.removeItem(atPath: partial)
            if let w = writeFailed {
                throw TaskFailure(FileWriter.isDiskFull(w) ? .nodeDiskFull : .stageInFailure,
                                  "\(field): cannot write the download: \(w)")
            }
            if e.code == .tooLarge {
                throw TaskFailure(.stageInFailure, "\(field): the download is larger than this node's limit of "
                                  + "\(maxBytes) bytes (stage_in.max_file_mb)")
            }
            throw e
        } catch {
            Posix.release(fd)
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
        guard response.status == 200 else {
            Posix.release(fd)
            try? FileManager.default.removeItem(atPath: partial)
            throw HTTPStatusError(status: response.status, what: "\(field): GET \(url)", serverText: response.statusLine)
        }
        do {
            try Posix.close(fd, path: partial)
            try Posix.rename(partial, to: dest)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .stageInFailure,
                              "\(field): cannot move the download into place: \(error)")
        }
        return (hasher.finalizeHex(), bytes)
    }
}
