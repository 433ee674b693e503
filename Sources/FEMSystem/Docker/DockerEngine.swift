import Foundation
import Synchronization

/// What went wrong talking to dockerd, classified so a caller can tell "unreachable" from "no such image" from
/// "the registry refused". Registry credentials never appear in a message.
public struct DockerError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: Sendable, Equatable {
        case unreachable     // no dockerd on the socket
        case notFound        // 404: no such image or container
        case conflict        // 409
        case pullFailed      // an error inside a pull stream, or the registry refused
        case server          // any other non-2xx answer
    }
    public var code: Code
    public var message: String
    public var description: String { message }
}

/// Engine API v1.41 over the unix socket, through libcurl. Knows nothing of tasks.
public struct DockerEngine: Sendable {
    public static let apiVersion = "v1.41"
    public var socket: String

    /// Which engine answers on the socket, learned once from its `/version` (see `kind()`).
    private let learned = KindCache()

    public init(socket: String = "/var/run/docker.sock") {
        self.socket = socket
    }

    /// dockerd, or podman's Docker-compatible service. They differ where the compat API does: podman answers some
    /// conflicts with 500, never sends an `oom` event nor sets `OOMKilled`, and mounts writable tmpfs on `/run` and
    /// `/var/tmp` of a read-only root.
    public enum Kind: Sendable, Equatable { case docker, podman }

    final class KindCache: Sendable {
        let value = Mutex<Kind?>(nil)
    }

    /// Told by the engine itself: podman's `/version` names the component "Podman Engine" (dockerd's is "Engine").
    /// Asked once per engine value; an engine that cannot be asked is taken for dockerd and asked again next time.
    public func kind() throws -> Kind {
        if let known = learned.value.withLock({ $0 }) { return known }
        let r = try request("GET", "/version", timeout: 10)
        guard r.status == 200 else { return .docker }
        let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
        let components = obj?["Components"] as? [[String: Any]] ?? []
        let kind: Kind = components.contains { ($0["Name"] as? String) == "Podman Engine" } ? .podman : .docker
        learned.value.withLock { $0 = kind }
        return kind
    }

    // MARK: - Plumbing

    func request(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                 timeout: Int = 60) throws -> HTTPResponse {
        try reachable { try HTTPTransfer.perform(httpRequest(method, path, body: body, headers: headers, timeout: timeout)) }
    }

    /// A request whose answer is streamed to `sink` (pull progress, logs). The response's body holds the first
    /// 64 KiB of what was streamed, for the message of a non-2xx answer.
    func stream(_ method: String, _ path: String, headers: [(String, String)] = [], cancel: CancelFlag? = nil,
                sink: (UnsafeRawBufferPointer) -> Bool) throws -> HTTPResponse {
        var head: [UInt8] = []
        var request = httpRequest(method, path, headers: headers, timeout: 0)
        request.cancel = cancel
        var r = try reachable {
            try HTTPTransfer.perform(request) { chunk in
                if head.count < 65_536 { head.append(contentsOf: chunk.prefix(65_536 - head.count)) }
                return sink(chunk)
            }
        }
        r.body = head
        return r
    }

    /// As `stream`, on the one `HTTPStreams` thread: the request holds no thread while it waits (a followed log, a
    /// wait for a container's end). `timeoutMilliseconds` nil: no limit. Like the blocking calls, it is not ended by
    /// cancelling the calling task (a launcher's wait outlasts a cancelled supervisor until the container ends).
    func streamed(_ method: String, _ path: String, timeoutMilliseconds: Int? = nil,
                  sink: (@Sendable (UnsafeRawBufferPointer) -> Bool)? = nil) async throws -> HTTPResponse {
        var request = httpRequest(method, path, timeout: 0)
        request.timeoutMilliseconds = timeoutMilliseconds
        do {
            guard let sink else { return try await HTTPStreams.shared.perform(request, cancelWithTask: false) }
            // The first 64 KiB streamed, for the message of a non-2xx answer.
            let head = Mutex<[UInt8]>([])
            var r = try await HTTPStreams.shared.perform(request, cancelWithTask: false) { chunk in
                head.withLock { if $0.count < 65_536 { $0.append(contentsOf: chunk.prefix(65_536 - $0.count)) } }
                return sink(chunk)
            }
            r.body = head.withLock { $0 }
            return r
        } catch let e as HTTPError where e.code == .connect {
            throw DockerError(code: .unreachable, message: "dockerd is not reachable on \(socket) (is it running?)")
        }
    }

    /// The `filters=` query value of the Engine API: a JSON object of string lists, percent-encoded.
    static func filters(_ f: [String: [String]]) throws -> String {
        escape(String(decoding: try JSONSerialization.data(withJSONObject: f, options: [.sortedKeys]), as: UTF8.self))
    }

    private func httpRequest(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                             timeout: Int) -> HTTPRequest {
        HTTPRequest(method: method, url: "http://localhost/\(Self.apiVersion)\(path)", headers: headers, body: body,
                    unixSocket: socket, timeoutSeconds: timeout)
    }

    private func reachable(_ body: () throws -> HTTPResponse) throws -> HTTPResponse {
        do {
            return try body()
        } catch let e as HTTPError where e.code == .connect {
            throw DockerError(code: .unreachable, message: "dockerd is not reachable on \(socket) (is it running?)")
        }
    }

    /// Decodes `{"message": "..."}`, dockerd's error body.
    static func message(_ body: [UInt8]) -> String {
        if let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
           let m = obj["message"] as? String { return m }
        return String(decoding: body.prefix(500), as: UTF8.self)
    }

    @discardableResult
    func expect(_ r: HTTPResponse, _ ok: Set<Int>, _ what: String) throws -> HTTPResponse {
        if ok.contains(r.status) { return r }
        let text = "\(what): \(Self.message(r.body))"
        switch r.status {
        case 404: throw DockerError(code: .notFound, message: text)
        case 409: throw DockerError(code: .conflict, message: text)
        case 500 where Self.isPodmanConflict(Self.message(r.body)) && (try? kind()) == .podman:
            // Podman 4 answers these with 500 where dockerd gives 409.
            throw DockerError(code: .conflict, message: text)
        default: throw DockerError(code: .server, message: "\(text) (HTTP \(r.status))")
        }
    }

    /// Podman's texts for what dockerd calls a conflict: a container not in a state for the call (kill of one that
    /// is not running, removal of a running one without force), a name already taken.
    static func isPodmanConflict(_ message: String) -> Bool {
        message.contains("container state improper") || message.contains("is already in use")
    }

    /// dockerd's RFC 3339 times carry nanoseconds, which ISO8601DateFormatter does not read: drop the fraction.
    static func parseTime(_ text: String) -> Date? {
        var t = text
        if let dot = t.firstIndex(of: "."), let end = t[dot...].firstIndex(where: { $0 == "Z" || $0 == "+" || $0 == "-" }) {
            t.removeSubrange(dot..<end)
        }
        return ISO8601DateFormatter().date(from: t)
    }

    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+/?:@")))
            ?? s
    }

    // MARK: - System

    public func ping() throws -> Bool {
        let r = try HTTPTransfer.perform(HTTPRequest(url: "http://localhost/_ping", unixSocket: socket, timeoutSeconds: 5))
        return r.status == 200 && String(decoding: r.body, as: UTF8.self) == "OK"
    }

    public struct Version: Decodable, Sendable {
        public var Version: String
        public var ApiVersion: String
    }

    public func version() throws -> Version {
        let r = try expect(request("GET", "/version"), [200], "version")
        return try JSONDecoder().decode(Version.self, from: Data(r.body))
    }

    /// How dockerd manages cgroups: `cgroupfs` takes a `CgroupParent` path, `systemd` a slice name.
    public struct CgroupSetup: Sendable, Equatable {
        public var driver: String
        public var version: String
    }

    public func cgroupSetup() throws -> CgroupSetup {
        let r = try expect(request("GET", "/info"), [200], "info")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] ?? [:]
        return CgroupSetup(driver: obj["CgroupDriver"] as? String ?? "", version: obj["CgroupVersion"] as? String ?? "")
    }

    // MARK: - Images

    public struct ImageInfo: Decodable, Sendable {
        public var Id: String
        public var RepoDigests: [String]?
    }

    /// Nil when the image is not present locally.
    public func inspectImage(_ reference: String) throws -> ImageInfo? {
        let r = try request("GET", "/images/\(reference)/json")
        if r.status == 404 { return nil }
        try expect(r, [200], "inspect image \(reference)")
        return try JSONDecoder().decode(ImageInfo.self, from: Data(r.body))
    }

    /// Pulls `reference` (`repo:tag` or `repo@sha256:…`). `registryAuth` is the base64 JSON for `X-Registry-Auth`.
    /// dockerd reports some failures inside a 200 stream as `{"error": …}` lines; those throw `.pullFailed`.
    /// A set `cancel` stops the pull within about a second (dockerd drops a pull whose client went away).
    public func pull(_ reference: String, registryAuth: String? = nil, cancel: CancelFlag? = nil,
                     progress: (String) -> Void = { _ in }) throws {
        let (repo, tagOrDigest) = Self.split(reference)
        var path = "/images/create?fromImage=\(Self.escape(repo))"
        if let t = tagOrDigest { path += "&tag=\(Self.escape(t))" }
        var pending: [UInt8] = []
        var streamError: String?
        let r = try stream("POST", path, headers: registryAuth.map { [("X-Registry-Auth", $0)] } ?? [],
                           cancel: cancel) { chunk in
            pending.append(contentsOf: chunk)
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
                if let e = obj["error"] as? String { streamError = e; continue }
                if let status = obj["status"] as? String {
                    let id = (obj["id"] as? String).map { "\($0): " } ?? ""
                    let detail = obj["progress"] as? String ?? ""
                    progress("\(id)\(status) \(detail)".trimmingCharacters(in: .whitespaces))
                }
            }
            return true
        }
        if r.status != 200 {
            throw DockerError(code: r.status == 404 ? .notFound : .pullFailed,
                              message: "pull \(reference): \(Self.message(r.body))")
        }
        if let streamError {
            throw DockerError(code: .pullFailed, message: "pull \(reference): \(streamError)")
        }
    }

    /// The manifest digest (`sha256:<hex>`) `reference` resolves to in its registry now, asked through dockerd
    /// (`GET /distribution/{name}/json`) without pulling. `registryAuth` as for `pull`.
    public func distributionDigest(_ reference: String, registryAuth: String? = nil) throws -> String {
        let r = try request("GET", "/distribution/\(reference)/json",
                            headers: registryAuth.map { [("X-Registry-Auth", $0)] } ?? [], timeout: 60)
        if r.status == 401 || r.status == 403 {
            throw DockerError(code: .pullFailed, message: "resolve \(reference): \(Self.message(r.body))")
        }
        try expect(r, [200], "resolve \(reference) in its registry")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
        guard let digest = (obj?["Descriptor"] as? [String: Any])?["digest"] as? String, digest.hasPrefix("sha256:") else {
            throw DockerError(code: .server, message: "resolve \(reference): the answer names no sha256 digest")
        }
        return digest
    }

    /// Removes a local image (404 is fine: it is gone either way).
    public func removeImage(_ reference: String) throws {
        try expect(request("DELETE", "/images/\(reference)?force=true"), [200, 404], "remove image \(reference)")
    }

    /// `registry:5000/repo:tag` → (`registry:5000/repo`, `tag`); `repo@sha256:…` → (`repo`, `sha256:…`).
    /// The repository of a reference, without its tag or digest: `repo` of `repo:tag`, `repo:tag@sha256:…` and
    /// `repo@sha256:…` (what `repo@<digest>` is made from).
    public static func repository(_ reference: String) -> String {
        split(split(reference).0).0
    }

    public static func split(_ reference: String) -> (String, String?) {
        if let at = reference.firstIndex(of: "@") {
            return (String(reference[..<at]), String(reference[reference.index(after: at)...]))
        }
        let lastSlash = reference.lastIndex(of: "/") ?? reference.startIndex
        if let colon = reference[lastSlash...].lastIndex(of: ":") {
            return (String(reference[..<colon]), String(reference[reference.index(after: colon)...]))
        }
        return (reference, "latest")
    }

    // MARK: - Containers

    /// Creates a container from an Engine API create body (`Image`, `Cmd`, `HostConfig`, `Labels`, …).
    public func createContainer(name: String?, body: [String: Any]) throws -> String {
        try createContainer(name: name, json: try JSONSerialization.data(withJSONObject: body))
    }

    /// The same, with the body already encoded.
    public func createContainer(name: String?, json data: Data) throws -> String {
        let path = "/containers/create" + (name.map { "?name=\(Self.escape($0))" } ?? "")
        let r = try expect(request("POST", path, body: Array(data)), [201], "create container")
        guard let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
              let id = obj["Id"] as? String else {
            throw DockerError(code: .server, message: "create container: no Id in the answer")
        }
        return id
    }

    public func start(_ id: String) throws {
        try expect(request("POST", "/containers/\(id)/start"), [204, 304], "start container \(id.prefix(12))")
    }

    /// Blocks until the container is not running; returns its exit code. Returns at once if it already exited.
    public func wait(_ id: String) throws -> Int {
        let r = try expect(request("POST", "/containers/\(id)/wait?condition=not-running", timeout: 0), [200],
                           "wait for container \(id.prefix(12))")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
        return obj?["StatusCode"] as? Int ?? -1
    }

    /// As `wait`, holding no thread while the container runs (the streams thread answers when dockerd does).
    public func waitForExit(_ id: String) async throws -> Int {
        let r = try expect(await streamed("POST", "/containers/\(id)/wait?condition=not-running"), [200],
                           "wait for container \(id.prefix(12))")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
        return obj?["StatusCode"] as? Int ?? -1
    }

    /// Waits at most `limit` for the container to stop: true when it did (or is gone), false when the time passed.
    public func waitStopped(_ id: String, upTo limit: Duration) async throws -> Bool {
        let ms = Int(limit.components.seconds) * 1000 + Int(limit.components.attoseconds / 1_000_000_000_000_000)
        guard ms > 0 else { return try inspectContainer(id)?.running != true }
        do {
            let r = try await streamed("POST", "/containers/\(id)/wait?condition=not-running", timeoutMilliseconds: ms)
            return r.status == 200 || r.status == 404
        } catch let e as HTTPError where e.code == .timeout {
            return false
        }
    }

    public struct ContainerState: Sendable, Equatable {
        /// `created`, `running`, `exited`, …
        public var status: String
        public var running: Bool
        public var exitCode: Int
        public var oomKilled: Bool
        public var labels: [String: String]
        /// When the container was created.
        public var created: Date
        /// The host pid of the container's first process while it runs, else 0.
        public var pid: Int32 = 0
    }

    /// Nil when there is no such container.
    public func inspectContainer(_ id: String) throws -> ContainerState? {
        let r = try request("GET", "/containers/\(id)/json")
        if r.status == 404 { return nil }
        try expect(r, [200], "inspect container \(id.prefix(12))")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] ?? [:]
        let state = obj["State"] as? [String: Any] ?? [:]
        let config = obj["Config"] as? [String: Any] ?? [:]
        return ContainerState(status: state["Status"] as? String ?? "", running: state["Running"] as? Bool ?? false, exitCode: state["ExitCode"] as? Int ?? -1,
                              oomKilled: state["OOMKilled"] as? Bool ?? false,
                              labels: config["Labels"] as? [String: String] ?? [:],
                              created: (obj["Created"] as? String).flatMap(Self.parseTime) ?? Date(),
                              pid: Int32(state["Pid"] as? Int ?? 0))
    }

    /// Whether the kernel's OOM killer ended the container. dockerd's `OOMKilled` flag can lose a race with the exit
    /// on cgroup v2, so for an exit code of 137 the container's `oom` events are consulted too (they may trail the
    /// exit by a moment).
    public func wasOOMKilled(_ id: String, state: ContainerState, since: Date) throws -> Bool {
        if state.oomKilled { return true }
        guard state.exitCode == 137 else { return false }
        let query = try Self.filters(["container": [id], "event": ["oom"], "type": ["container"]])
        for attempt in 0..<5 {
            if attempt > 0 { Thread.sleep(forTimeInterval: 0.2) }
            let until = Int(Date().timeIntervalSince1970) + 1
            let r = try expect(request("GET", "/events?since=\(Int(since.timeIntervalSince1970) - 1)&until=\(until)&filters=\(query)"),
                               [200], "events of container \(id.prefix(12))")
            if String(decoding: r.body, as: UTF8.self).contains("\"oom\"") { return true }
        }
        return false
    }

    /// Container ids (all states) that carry every label in `labels`.
    public func containers(labels: [String: String]) throws -> [String] {
        let query = try Self.filters(["label": labels.map { "\($0.key)=\($0.value)" }])
        let r = try expect(request("GET", "/containers/json?all=true&filters=\(query)"), [200], "list containers")
        let list = try JSONSerialization.jsonObject(with: Data(r.body)) as? [[String: Any]] ?? []
        return list.compactMap { $0["Id"] as? String }
    }

    public func kill(_ id: String, signal: String = "KILL") throws {
        let r = try request("POST", "/containers/\(id)/kill?signal=\(signal)")
        // 409: not running any more, which is what we wanted (podman says so with a 500, read as a conflict).
        do {
            try expect(r, [204, 409], "kill container \(id.prefix(12))")
        } catch let e as DockerError where e.code == .conflict {
            return
        }
    }

    public func remove(_ id: String, force: Bool = true) throws {
        let r = try request("DELETE", "/containers/\(id)?force=\(force)&v=true")
        try expect(r, [204, 404], "remove container \(id.prefix(12))")
    }

    public enum Stream: UInt8, Sendable { case stdout = 1, stderr = 2 }

    /// Splits dockerd's log stream into frames (8-byte header: stream, 0, 0, 0, big-endian length) as chunks arrive.
    final class LogFrames: Sendable {
        private let pending = Mutex<[UInt8]>([])
        func add(_ chunk: UnsafeRawBufferPointer, _ handler: (Stream, UnsafeRawBufferPointer) -> Void) {
            pending.withLock { pending in
                pending.append(contentsOf: chunk)
                var start = 0
                while pending.count - start >= 8 {
                    let length = Int(pending[start + 4]) << 24 | Int(pending[start + 5]) << 16
                        | Int(pending[start + 6]) << 8 | Int(pending[start + 7])
                    guard pending.count - start >= 8 + length else { break }
                    let stream = Stream(rawValue: pending[start]) ?? .stdout
                    pending[(start + 8)..<(start + 8 + length)].withUnsafeBytes { handler(stream, $0) }
                    start += 8 + length
                }
                pending.removeFirst(start)
            }
        }
    }

    /// As `logs`, on the streams thread: following a running container's logs holds no thread. `handler` runs on
    /// that thread and must not block.
    public func followLogs(_ id: String, follow: Bool,
                           handler: @escaping @Sendable (Stream, UnsafeRawBufferPointer) -> Void) async throws {
        let frames = LogFrames()
        let r = try await streamed("GET", "/containers/\(id)/logs?stdout=true&stderr=true&follow=\(follow)") { chunk in
            frames.add(chunk, handler)
            return true
        }
        try expect(r, [200], "logs of container \(id.prefix(12))")
    }

    /// Streams a container's logs (`Tty: false`), demultiplexing dockerd's 8-byte frame headers
    /// (stream, 0, 0, 0, big-endian length). With `follow`, returns when the container stops.
    public func logs(_ id: String, follow: Bool, handler: (Stream, UnsafeRawBufferPointer) -> Void) throws {
        var pending: [UInt8] = []
        let r = try stream("GET", "/containers/\(id)/logs?stdout=true&stderr=true&follow=\(follow)") { chunk in
            pending.append(contentsOf: chunk)
            while pending.count >= 8 {
                let length = Int(pending[4]) << 24 | Int(pending[5]) << 16 | Int(pending[6]) << 8 | Int(pending[7])
                guard pending.count >= 8 + length else { break }
                let stream = Stream(rawValue: pending[0]) ?? .stdout
                pending[8..<(8 + length)].withUnsafeBytes { handler(stream, $0) }
                pending.removeFirst(8 + length)
            }
            return true
        }
        try expect(r, [200], "logs of container \(id.prefix(12))")
    }
}
