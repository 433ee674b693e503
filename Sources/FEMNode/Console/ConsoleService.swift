import FEMCore
import FEMJournal
import FEMSystem
import Foundation
import Hummingbird
import HummingbirdBcrypt
import HummingbirdCore
import HummingbirdTLS
import Logging
import ServiceLifecycle

/// The steward's console (`[console]`, docs/console.md): tasks and their timelines, outputs awaiting approval with
/// previews, and the airlock's decisions under the logged-in account. A `Service` of the daemon's group, like the
/// metrics. It reads the journal through its own connection pool, on two threads of its own, so a page never holds
/// a thread or a connection the runner needs.
struct ConsoleService: Service {
    let settings: ConsoleSettings
    let nodeID: String
    let workDir: String
    let journalPath: String
    let logger: Logger
    /// `outputs.checks.block_on_findings` as the node runs now (a config reload changes it).
    let blockOnFindings: @Sendable () -> Bool
    /// After a decision: the daemon acts on it now rather than at its next look.
    let decided: @Sendable () async -> Void

    func run() async throws {
        let journal = try SQLiteJournal(path: journalPath, nodeID: nodeID)
        let pool = BlockingPool(size: 2, name: "fem-console")
        // A login for an unknown account is checked against this hash (at the accounts' highest cost), so it takes
        // as long as one for a known account.
        let cost = settings.accounts.values.compactMap { UInt8($0.passwordHash.dropFirst(4).prefix(2)) }.max() ?? 12
        let dummy = try await pool.run { Bcrypt.hash(ConsoleCrypto.token(), cost: min(31, max(4, cost))) }
        let app = ConsoleApp(settings: settings, nodeID: nodeID, workDir: workDir, journal: journal, pool: pool,
                             sessions: ConsoleSessions(idle: TimeInterval(settings.sessionMinutes * 60)),
                             dummyHash: dummy, logger: logger, blockOnFindings: blockOnFindings, decided: decided)
        let router = Router()
        router.add(middleware: ConsoleHeaders<BasicRequestContext>(secure: settings.tls != nil, logger: logger))
        app.routes(router)

        let listen = settings.listen, logger = self.logger
        var server: HTTPServerBuilder = .http1()
        if let files = settings.tls {
            do {
                let key = try NIOSSLPrivateKey(file: files.keyFile, format: .pem)
                let tls = TLSConfiguration.makeServerConfiguration(
                    certificateChain: try NIOSSLCertificate.fromPEMFile(files.certFile).map { .certificate($0) },
                    privateKey: .privateKey(key))
                server = try .tls(.http1(), tlsConfiguration: tls)
            } catch {
                let why = "console: cannot use the certificate \(files.certFile) and key \(files.keyFile) ([console] tls): \(error)"
                logger.error("\(why)")
                throw error
            }
        }
        var serverLogger = logger
        serverLogger.logLevel = .notice
        let scheme = settings.tls == nil ? "http" : "https"
        let application = Application(
            router: router, server: server,
            configuration: ApplicationConfiguration(address: .hostname(listen.host, port: listen.port),
                                                    availableConnectionsDelegate: MaximumAvailableConnections(64)),
            onServerRunning: { channel in
                var bound = listen
                bound.port = channel.localAddress?.port ?? listen.port
                logger.notice("console: serving \(scheme)://\(bound)/ (\(settings.accounts.count) account(s))")
            },
            logger: serverLogger)
        do {
            try await application.run()
        } catch {
            logger.error("console: cannot serve on \(listen) ([console] listen): \(error)")
            throw error
        }
    }
}

/// The security headers on every answer: no framing, no sniffing, no referrer, and a policy that allows only the
/// console's own files (no inline script or style, nothing from elsewhere).
struct ConsoleHeaders<Context: RequestContext>: RouterMiddleware {
    let secure: Bool
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as Hummingbird.HTTPError {
            response = Response(status: error.status, headers: [.contentType: "text/plain; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(string: "\(error.status.code) \(error.status.reasonPhrase)\n")))
        } catch {
            // A journal or file error: a plain 500 with the same headers as every page, the cause in the log only.
            logger.error("console: \(request.method) \(request.uri.path) failed: \(error)")
            response = Response(status: .internalServerError, headers: [.contentType: "text/plain; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(string: "500 the console could not answer; see the node's log\n")))
        }
        response.headers[.contentSecurityPolicy] =
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
        if let name = HTTPFields.Element.Name("X-Frame-Options") { response.headers[name] = "DENY" }
        response.headers[.xContentTypeOptions] = "nosniff"
        if let name = HTTPFields.Element.Name("Referrer-Policy") { response.headers[name] = "no-referrer" }
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        if secure, let name = HTTPFields.Element.Name("Strict-Transport-Security") { response.headers[name] = "max-age=31536000" }
        return response
    }
}

/// The console's handlers.
struct ConsoleApp: Sendable {
    let settings: ConsoleSettings
    let nodeID: String
    let workDir: String
    let journal: SQLiteJournal
    let pool: BlockingPool
    let sessions: ConsoleSessions
    let throttle = LoginThrottle()
    let dummyHash: String
    let logger: Logger
    let blockOnFindings: @Sendable () -> Bool
    let decided: @Sendable () async -> Void

    static let cookieName = "fem_console"
    typealias Viewer = ConsolePages.Viewer

    func routes(_ router: Router<BasicRequestContext>) {
        router.get("/") { _, _ in Self.redirect("/tasks") }
        router.get("/static/console.css") { _, _ in Self.asset(ConsoleAssets.css, "text/css; charset=utf-8") }
        router.get("/static/console.js") { _, _ in Self.asset(ConsoleAssets.js, "text/javascript; charset=utf-8") }
        router.get("/login") { request, _ in
            if current(request) != nil { return Self.redirect("/tasks") }
            return Self.html(.ok, ConsolePages.login(nodeID: nodeID, error: nil))
        }
        router.post("/login") { request, _ in try await login(request) }
        router.post("/logout") { request, _ in
            try await guarded(request) { viewer, id, _ in
                sessions.close(id)
                logger.notice("console: \(viewer.account) logged out")
                var r = Self.redirect("/login")
                r.headers[.setCookie] = cookie("", maxAge: 0)
                return r
            }
        }
        router.get("/tasks") { request, _ in
            try await page(request) { viewer in
                let (rows, waiting) = try await pool.run {
                    (try journal.tasks(states: nil, limit: 200), try journal.count(states: [.awaitingApproval]))
                }
                return Self.html(.ok, ConsolePages.tasks(rows, waiting: waiting, viewer: viewer, nodeID: nodeID))
            }
        }
        router.get("/api/tasks") { request, _ in
            guard current(request) != nil else {
                return Response(status: .unauthorized, headers: [.contentType: "application/json"],
                                body: .init(byteBuffer: ByteBuffer(string: #"{"error":"not logged in"}"#)))
            }
            let rows = try await pool.run { try journal.tasks(states: nil, limit: 200) }
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: ConsolePages.tasksJSON(rows))))
        }
        router.get("/tasks/:id") { request, context in
            try await page(request) { viewer in
                guard let id = Self.taskID(context), let found = try await timeline(id, viewer) else {
                    return notFound(viewer)
                }
                return Self.html(.ok, found)
            }
        }
        router.get("/outputs") { request, _ in
            try await page(request) { viewer in
                let rows = try await pool.run {
                    try journal.tasks(states: [.awaitingApproval], limit: 1000).map { ($0, Airlock.manifest(journal, $0.taskID)?.view) }
                }
                return Self.html(.ok, ConsolePages.outputs(rows, viewer: viewer, nodeID: nodeID))
            }
        }
        router.get("/outputs/:id") { request, context in
            try await page(request) { viewer in
                guard let id = Self.taskID(context), let review = try await review(id) else { return notFound(viewer) }
                return Self.html(.ok, ConsolePages.review(review, viewer: viewer, nodeID: nodeID))
            }
        }
        router.get("/outputs/:id/file") { request, context in
            try await page(request) { viewer in
                guard let id = Self.taskID(context), let path = request.uri.queryParameters.get("path"),
                      let image = try await image(id, path) else { return notFound(viewer) }
                return Response(status: .ok, headers: [.contentType: image.type.rawValue, .cacheControl: "no-store"],
                                body: .init(byteBuffer: ByteBuffer(bytes: image.bytes)))
            }
        }
        router.post("/outputs/:id/decide") { request, context in
            try await guarded(request) { viewer, _, form in
                try await decide(Self.taskID(context), form, viewer)
            }
        }
    }

    // MARK: Sessions

    /// The logged-in session behind the request's cookie.
    func current(_ request: Request) -> (id: String, viewer: Viewer)? {
        guard let id = ConsoleCrypto.cookie(Self.cookieName, in: request.headers[.cookie]),
              let s = sessions.session(id) else { return nil }
        return (id, Viewer(account: s.account, role: s.role, csrf: s.csrf))
    }

    func cookie(_ value: String, maxAge: Int? = nil) -> String {
        "\(Self.cookieName)=\(value); Path=/; HttpOnly; SameSite=Strict" + (settings.tls != nil ? "; Secure" : "")
            + (maxAge.map { "; Max-Age=\($0)" } ?? "")
    }

    /// A page for a logged-in account; anyone else is sent to the login page.
    func page(_ request: Request, _ body: (Viewer) async throws -> Response) async throws -> Response {
        guard let viewer = current(request)?.viewer else { return Self.redirect("/login") }
        return try await body(viewer)
    }

    /// A POST of a logged-in account that passed the CSRF checks: its Origin (when sent) is this console, and the
    /// form carries the session's token.
    func guarded(_ request: Request, _ body: (Viewer, String, [String: String]) async throws -> Response) async throws -> Response {
        guard let cur = current(request) else {
            return Self.html(.forbidden, ConsolePages.message("Not logged in", "Refused: not logged in (or the session "
                             + "expired after \(settings.sessionMinutes) idle minutes); log in again.", viewer: nil, nodeID: nodeID))
        }
        let id = cur.id, viewer = cur.viewer
        if let refusal = originRefusal(request) {
            logger.warning("console: refused a POST to \(TextEscaping.escaped(String(request.uri.path.prefix(200)))) of \(viewer.account): \(refusal)")
            return Self.html(.forbidden, ConsolePages.message("Refused", refusal, viewer: viewer, nodeID: nodeID))
        }
        let form = try await Self.form(request)
        guard let form, let token = form["csrf"], ConsoleCrypto.constantTimeEqual(token, viewer.csrf) else {
            logger.warning("console: refused a POST to \(TextEscaping.escaped(String(request.uri.path.prefix(200)))) of \(viewer.account): the CSRF token is missing or wrong")
            return Self.html(.forbidden, ConsolePages.message("Refused", "Refused by the CSRF check: the form's token is "
                             + "missing or wrong (a form from another site, or an old page); reload the page and try again.",
                             viewer: viewer, nodeID: nodeID))
        }
        return try await body(viewer, id, form)
    }

    /// Why a POST's Origin is refused: present and not this console's (`null` included). Browsers send it on every
    /// cross-site POST.
    func originRefusal(_ request: Request) -> String? {
        guard let origin = request.headers[.origin] else { return nil }
        let expected = "\(settings.tls == nil ? "http" : "https")://\(request.head.authority ?? "")"
        if origin.lowercased() == expected.lowercased() { return nil }
        // Under `Referrer-Policy: no-referrer` Chromium sends `Origin: null` on the console's own form posts; the
        // browser's `Sec-Fetch-Site` (which no page can set) then says they are same-origin. A null origin from
        // anywhere else (a sandboxed frame, another site) says cross-site and stays refused.
        if origin == "null", let name = HTTPFields.Element.Name("Sec-Fetch-Site"), request.headers[name] == "same-origin" {
            return nil
        }
        return "Refused by the CSRF check: the request comes from \(TextEscaping.escaped(String(origin.prefix(200)))), not from this console (\(expected))."
    }

    func login(_ request: Request) async throws -> Response {
        if let refusal = originRefusal(request) {
            logger.warning("console: refused a login: \(refusal)")
            return Self.html(.forbidden, ConsolePages.message("Refused", refusal, viewer: nil, nodeID: nodeID))
        }
        let form = try await Self.form(request) ?? [:]
        let name = String((form["account"] ?? "").prefix(64)), password = form["password"] ?? ""
        let shown = TextEscaping.escaped(name)
        if let wait = throttle.admit(name) {
            logger.warning("console: login for account \"\(shown)\" not checked: \(wait)")
            return Self.html(.tooManyRequests, ConsolePages.login(nodeID: nodeID, error: wait))
        }
        let account = settings.accounts[name]
        let hash = account?.passwordHash ?? dummyHash
        // The same work whether the account exists or not; bcrypt off the server's threads.
        let matches: Bool
        do {
            matches = try await pool.run { Bcrypt.verify(password, hash: hash) }
        } catch {
            throttle.finish(name, succeeded: false)
            throw error
        }
        guard let account, matches, !password.isEmpty else {
            let locked = throttle.finish(name, succeeded: false)
            let lock = locked.map { "; the account is locked for \(Int($0)) s" } ?? ""
            logger.warning("console: failed login for account \"\(shown)\"\(lock)")
            return Self.html(.unauthorized, ConsolePages.login(nodeID: nodeID, error: "Wrong account or password."))
        }
        throttle.finish(name, succeeded: true)
        let (id, _) = sessions.open(account: name, role: account.role)
        logger.notice("console: \(name) logged in (role \(account.role.rawValue))")
        var r = Self.redirect("/tasks")
        r.headers[.setCookie] = cookie(id)
        return r
    }

    // MARK: Pages' data (on the console's own threads)

    func timeline(_ id: String, _ viewer: Viewer) async throws -> String? {
        let workDir = self.workDir, nodeID = self.nodeID
        return try await pool.run { [journal] in
            guard let rec = try journal.task(id) else { return nil }
            let events = try journal.history(id)
            let logs = ["stdout.log", "stderr.log"].map { name in
                let lines = ConsoleFiles.tail("\(workDir)/sandboxes/\(id)/logs/\(name)")
                return ConsolePages.LogTail(name: name, lines: lines ?? [], missing: lines == nil)
            }
            return ConsolePages.timeline(rec, events: events, logs: logs, viewer: viewer, nodeID: nodeID)
        }
    }

    func review(_ id: String) async throws -> ConsolePages.Review? {
        let dir = "\(workDir)/staging/\(id)"
        return try await pool.run { [journal] in
            guard let rec = try journal.task(id), let held = Airlock.manifest(journal, id) else { return nil }
            var previews: [String: ConsolePages.Preview] = [:]
            // A bounded page: previews of the first files only (the list above names them all).
            for f in held.view.files.prefix(ConsoleFiles.maxPreviews) {
                previews[f.path] = ConsoleFiles.preview(dir: dir, path: f.path)
            }
            let decided = rec.state == .awaitingApproval ? try journal.completedStep(Runner.approvalStep, of: id)
                : "the task is \(rec.state.rawValue)"
            return ConsolePages.Review(rec: rec, manifest: held.view, sha256: held.sha256, previews: previews, decided: decided)
        }
    }

    /// A staged file the manifest lists, when it is a PNG, JPEG or GIF.
    func image(_ id: String, _ path: String) async throws -> (type: ConsoleFiles.ImageType, bytes: [UInt8])? {
        let dir = "\(workDir)/staging/\(id)"
        return try await pool.run { [journal] in
            guard let held = Airlock.manifest(journal, id), held.view.files.contains(where: { $0.path == path }),
                  let full = ConsoleFiles.inside(dir, path),
                  let h = ConsoleFiles.head(full, limit: ConsoleFiles.imageLimit), !h.more,
                  let type = ConsoleFiles.imageType(h.bytes) else { return nil }
            return (type, h.bytes)
        }
    }

    func decide(_ id: String?, _ form: [String: String], _ viewer: Viewer) async throws -> Response {
        guard let id else { return notFound(viewer) }
        guard viewer.role == .steward else {
            logger.warning("console: refused a decision on task \(id) by \(viewer.account): role \(viewer.role.rawValue), not steward")
            return Self.html(.forbidden, ConsolePages.message("Refused", "Refused: deciding on outputs needs the steward "
                             + "role; the account \(viewer.account) has the \(viewer.role.rawValue) role.", viewer: viewer, nodeID: nodeID))
        }
        let approve: Bool
        switch form["decision"] {
        case "approve": approve = true
        case "reject": approve = false
        default:
            return Self.html(.badRequest, ConsolePages.message("Refused", "Refused: the form's decision must be approve or reject.",
                                                               viewer: viewer, nodeID: nodeID))
        }
        func text(_ name: String) -> String? {
            guard let v = form[name]?.trimmingCharacters(in: .whitespacesAndNewlines), !v.isEmpty else { return nil }
            return String(v.prefix(2000))
        }
        let reason = text("reason"), override = text("override")
        if !approve && reason == nil {
            return Self.html(.badRequest, ConsolePages.message("Refused", "Refused: a rejection needs a reason (it is sent "
                             + "with the decision).", viewer: viewer, nodeID: nodeID))
        }
        let decider = Airlock.Decider(name: viewer.account, via: "console", uid: nil)
        // The decision is bound to the manifest the page showed; a form without it is not the console's.
        guard let sha = form["manifest_sha256"], Patterns.matches(#"^[0-9a-f]{64}$"#, sha) else {
            return Self.html(.badRequest, ConsolePages.message("Refused", "Refused: the form names no manifest "
                             + "(manifest_sha256); open the review page and decide there.", viewer: viewer, nodeID: nodeID))
        }
        do {
            let decision = try await pool.run { [journal] in
                try Airlock.decide(journal, taskID: id, approve: approve, reason: reason, by: decider,
                                   manifestSHA256: sha, override: override, blockOnFindings: blockOnFindings())
            }
            logger.notice("console: task \(id): \(decision.message)")
            await decided()
            return Self.html(.ok, ConsolePages.decided(id, message: decision.message, viewer: viewer, nodeID: nodeID))
        } catch let failure as CommandFailure {
            logger.warning("console: a decision on task \(id) by \(viewer.account) was refused: \(failure.message)")
            return Self.html(.conflict, ConsolePages.message("Refused", "Refused: \(failure.message)", viewer: viewer, nodeID: nodeID))
        }
    }

    func notFound(_ viewer: Viewer) -> Response {
        Self.html(.notFound, ConsolePages.message("Not found", "No such task or file on this node.", viewer: viewer, nodeID: nodeID))
    }

    // MARK: Helpers

    static func taskID(_ context: BasicRequestContext) -> String? {
        guard let id = context.parameters.get("id"), Patterns.matches(Patterns.taskID, id) else { return nil }
        return id
    }

    /// The form of a POST (at most 64 KiB); nil when it does not parse.
    static func form(_ request: Request) async throws -> [String: String]? {
        var request = request
        let body = try await request.collectBody(upTo: 64 * 1024)
        return ConsoleCrypto.form(String(buffer: body))
    }

    static func html(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/html; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func redirect(_ location: String) -> Response {
        Response(status: .seeOther, headers: [.location: location])
    }

    static func asset(_ text: String, _ type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"],
                 body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
