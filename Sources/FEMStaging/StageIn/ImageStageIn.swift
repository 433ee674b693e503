import FEMCore
import FEMSystem
import Foundation

/// Stage-in step for docker plans: makes the plan's image present through the Engine API, then hands over to the
/// next step. Pull policy: a plan's `pull_policy`, else `if-not-present` for digests and `always` for tags. The
/// resolved image (digest or id) is journaled as step `image`, so a restarted stage-in does not pull again.
public struct ImageStageIn: StageIn {
    let engine: DockerEngine
    /// Registry host → the `X-Registry-Auth` value (base64 JSON). Secrets: never logged.
    let registryAuth: [String: String]
    let next: any StageIn
    /// How long a task waits for an unreachable dockerd (a restart, an upgrade) before it fails.
    let waitForDaemon: Duration

    public init(engine: DockerEngine, registryAuth: [String: String], next: any StageIn,
                waitForDaemon: Duration = .zero) {
        self.engine = engine
        self.registryAuth = registryAuth
        self.next = next
        self.waitForDaemon = waitForDaemon
    }

    /// Waits (with one notice event) until dockerd answers, up to `waitForDaemon`; a cancel ends the wait at once.
    func awaitDaemon(reporter: StageReporter) async throws {
        let engine = self.engine
        func answers() async -> Bool { ((try? await offload("fem-docker-ping") { try engine.ping() }) ?? false) }
        if await answers() { return }
        guard waitForDaemon > .zero else { return }  // the pull says it is unreachable
        let seconds = Int(waitForDaemon.components.seconds)
        reporter.notice("dockerd is not reachable on \(engine.socket); waiting up to \(seconds) s for it to come back",
                        ["waiting_for": .string("dockerd"), "seconds": .int(Int64(seconds))])
        let deadline = ContinuousClock.now + waitForDaemon
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(500))
            if await answers() {
                reporter.notice("dockerd answers again; going on", ["waiting_for": .string("dockerd")])
                return
            }
        }
        throw TaskFailure(.runnerSystemFailure, "dockerd is not reachable on \(engine.socket) (waited \(seconds) s)")
    }

    public func check(_ plan: ToolPlan) -> String? { next.check(plan) }

    public func stageIn(_ job: LaunchJob, reporter: StageReporter) async throws {
        try await next.stageIn(job, reporter: reporter)
        let plan = job.task.plan
        guard plan.launcher == "docker", let image = plan.image else { return }
        try await awaitDaemon(reporter: reporter)
        guard reporter.isDone("image") == nil else { return }
        let policy = plan.pullPolicy ?? (image.contains("@") ? .ifNotPresent : .always)
        let auth = registryAuth[Self.registryHost(image)]
        let engine = self.engine
        let pinned = job.trust.imageDigest
        let resolved: String = try await offload("fem-pull", cancellable: { cancel in
            do {
                if policy == .ifNotPresent, let info = try engine.inspectImage(image) {
                    reporter.progress("image \(image) is present; not pulled", ["image": .string(image)])
                    if let pinned { return try Self.pin(image, info: info, to: pinned, plan: plan) }
                    return info.RepoDigests?.first ?? info.Id
                }
                reporter.progress("pulling \(image)", ["image": .string(image)])
                var last = ""
                try engine.pull(image, registryAuth: auth, cancel: cancel) { line in
                    // Layer states, not every progress-bar tick.
                    guard !line.contains("["), line != last else { return }
                    last = line
                    reporter.progress("pull \(image): \(line)", ["image": .string(image)])
                }
                guard let info = try engine.inspectImage(image) else {
                    throw TaskFailure(.stageInFailure, "image \(image) is not present after its pull")
                }
                if let pinned { return try Self.pin(image, info: info, to: pinned, plan: plan) }
                return info.RepoDigests?.first { $0.hasPrefix(DockerEngine.split(image).0 + "@") } ?? info.Id
            } catch let e as DockerError {
                throw Self.failure(e, image: image)
            }
        })
        reporter.markDone("image", resolved)
        reporter.progress("image \(image) ready (\(resolved))", ["image": .string(image), "digest": .string(resolved)])
    }

    /// The tool registry's pin (`TrustVerdict.imageDigest`): the local image `image` now names must carry the approved
    /// manifest digest, or the task is declined naming both digests (the tag was moved since the approval). Returns
    /// `repo@<pinned>`, the reference the launcher runs, so a tag moved after this check cannot slip in.
    static func pin(_ image: String, info: DockerEngine.ImageInfo, to pinned: String, plan: ToolPlan) throws -> String {
        let repo = DockerEngine.repository(image)
        // The digests of the image the reference names now, whatever name dockerd files them under (it reports
        // `alpine@…` for `docker.io/library/alpine:3`): a manifest digest names its content, so a match is the
        // approved image.
        let all = (info.RepoDigests ?? []).compactMap { entry in entry.firstIndex(of: "@").map { String(entry[entry.index(after: $0)...]) } }
        if all.contains(pinned) { return "\(repo)@\(pinned)" }
        let sameName = (info.RepoDigests ?? []).filter { $0.hasPrefix(repo + "@") }.map { String($0.dropFirst(repo.count + 1)) }
        let now = sameName.first ?? all.first ?? "image id \(info.Id)"
        throw PolicyDecline("image \(image) resolves to \(now), but this node approved \(plan.id) \(plan.version) with "
                            + "\(pinned): the tag was moved; approve the plan again after review")
    }

    /// What went wrong, in words an administrator can act on.
    static func failure(_ e: DockerError, image: String) -> TaskFailure {
        let text = e.message.lowercased()
        switch e.code {
        case .unreachable:
            return TaskFailure(.runnerSystemFailure, e.message)
        case .notFound:
            return TaskFailure(.stageInFailure, "image \(image) was not found in its registry (\(e.message))")
        default:
            if text.contains("unauthorized") || text.contains("authentication required") || text.contains("denied") {
                return TaskFailure(.stageInFailure, "the registry refused the credentials for \(image) (\(e.message))")
            }
            if text.contains("connection refused") || text.contains("no such host") || text.contains("i/o timeout") {
                return TaskFailure(.stageInFailure, "the registry of \(image) is unreachable (\(e.message))")
            }
            if text.contains("manifest unknown") || text.contains("not found") {
                return TaskFailure(.stageInFailure, "image \(image) was not found in its registry (\(e.message))")
            }
            return TaskFailure(.stageInFailure, "cannot pull \(image): \(e.message)")
        }
    }

    /// `127.0.0.1:5000/fem/x:1` → `127.0.0.1:5000`; `library/busybox` → `docker.io`.
    public static func registryHost(_ image: String) -> String {
        guard let slash = image.firstIndex(of: "/") else { return "docker.io" }
        let first = String(image[..<slash])
        return first.contains(".") || first.contains(":") || first == "localhost" ? first : "docker.io"
    }

    /// The `X-Registry-Auth` header value for a login.
    public static func authHeader(username: String, password: String, server: String) -> String {
        let json = try? JSONSerialization.data(withJSONObject: ["username": username, "password": password,
                                                                "serveraddress": server], options: [.sortedKeys])
        return (json ?? Data()).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    }
}
