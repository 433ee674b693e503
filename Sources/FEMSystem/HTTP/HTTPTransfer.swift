import CCurl
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One HTTP request through libcurl: over TCP (with TLS verification always on) or over a unix socket (the Docker
/// Engine API). Header values may be secrets (`Authorization`, `X-Registry-Auth`): they never appear in an error
/// or a description.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [(String, String)]
    public var body: [UInt8]?
    public var unixSocket: String?
    /// 0 means no overall limit (streams such as logs and pulls run as long as they need).
    public var timeoutSeconds: Int
    /// When set, the overall limit in milliseconds instead of `timeoutSeconds` (a stop's grace period).
    public var timeoutMilliseconds: Int?
    public var connectTimeoutSeconds: Int
    public var caFile: String?
    /// A file to send as the body (PUT), streamed from disk: memory stays flat whatever its size.
    public var bodyFile: String?
    /// Give up (as a timeout) when fewer than 1 byte/s moved for this many seconds: for transfers without an overall
    /// limit that must not hang on a stalled server.
    public var stallSeconds: Int?
    /// The protocols libcurl may use for this request, as for CURLOPT_PROTOCOLS_STR ("https", "http,https").
    /// Redirects are never followed.
    public var protocols: String = "http,https"
    /// Stop (as `.tooLarge`) when the answer's body is larger than this many bytes.
    public var maxBodyBytes: Int64?
    /// With `bodyFile`: the size and SHA-256 the body must have (an approved manifest's). The bytes are hashed as
    /// they are handed to libcurl, and a body that differs in size or hash is stopped before its last byte goes
    /// (`.bodyChanged`), so a server never receives a complete file that was not the approved one.
    public var bodyExpected: (size: Int64, sha256: String)?
    /// Stops the transfer (within about a second, even while no byte moves) when set: `HTTPError.cancelled`.
    public var cancel: CancelFlag?

    public init(method: String = "GET", url: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                unixSocket: String? = nil, timeoutSeconds: Int = 30, connectTimeoutSeconds: Int = 10,
                caFile: String? = nil, bodyFile: String? = nil) {
        self.bodyFile = bodyFile
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.unixSocket = unixSocket
        self.timeoutSeconds = timeoutSeconds
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.caFile = caFile
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    /// The body, unless a streaming handler consumed it.
    public var body: [UInt8]
    /// The server's status line without the protocol (`401 Unauthorized`), printable ASCII only, at most 100
    /// characters: what may go into a message about a failed answer (a body never does).
    public var statusLine: String = ""
}

public struct HTTPError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case connect       // could not connect (refused, no such socket, DNS)
        case timeout
        case tls
        case transfer      // the connection broke mid-way
        case aborted       // the streaming handler asked to stop
        case tooLarge      // the body was larger than `maxBodyBytes`
        case bodyChanged   // the file sent differed from `bodyExpected`; stopped before its last byte
        case cancelled     // the request's CancelFlag was set
        case setup
    }
    public var code: Code
    public var message: String

    public var description: String { message }
}

/// Performs requests. Not shared between threads: each call makes and frees its own easy handle.
public enum HTTPTransfer {
    static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// Receives body bytes as they arrive; returns false to abort the transfer.
    public typealias Sink = (UnsafeRawBufferPointer) -> Bool

    /// Performs `request`, collecting the body.
    public static func perform(_ request: HTTPRequest) throws -> HTTPResponse {
        let transfer = try CurlTransfer(request, sink: nil)
        return try transfer.finish(curl_easy_perform(transfer.handle))
    }

    /// Performs `request`, streaming the body to `sink` instead of collecting it. libcurl calls back only during
    /// the transfer, so the sink does not escape.
    public static func perform(_ request: HTTPRequest, sink: (UnsafeRawBufferPointer) -> Bool) throws -> HTTPResponse {
        try withoutActuallyEscaping(sink) { sink in
            let transfer = try CurlTransfer(request, sink: sink)
            return try transfer.finish(curl_easy_perform(transfer.handle))
        }
    }
}

/// One request's easy handle and everything libcurl points into while it runs, set up from an `HTTPRequest`; run by
/// `curl_easy_perform` (HTTPTransfer) or a multi handle (HTTPStreams), then `finish` turns libcurl's result into an
/// answer or an error. Used by one thread at a time (handed to the streams thread, never shared).
final class CurlTransfer: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private let request: HTTPRequest
    private let context = Context()
    private let unmanaged: Unmanaged<Context>
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private var headerList: UnsafeMutablePointer<curl_slist>?

    final class Context {
        var collected: [UInt8] = []
        var sink: HTTPTransfer.Sink?
        var aborted = false
        var upload: Int32 = -1
        var received: Int64 = 0
        var maxBody: Int64 = .max
        var tooLarge = false
        var statusLine = ""
        var expected: (size: Int64, sha256: String)?
        var digest = SHA256Digest()
        var sent: Int64 = 0
        var bodyChanged = false
        var cancel: CancelFlag?
    }

    deinit {
        curl_easy_cleanup(handle)
        curl_slist_free_all(headerList)
        errorBuffer.deallocate()
        if context.upload >= 0 { close(context.upload) }
        unmanaged.release()
    }

    init(_ request: HTTPRequest, sink: HTTPTransfer.Sink?) throws {
        _ = HTTPTransfer.globalInit
        guard let handle = curl_easy_init() else { throw HTTPError(code: .setup, message: "libcurl: no easy handle") }
        self.handle = handle
        self.request = request
        context.sink = sink
        context.maxBody = request.maxBodyBytes ?? .max
        context.cancel = request.cancel
        unmanaged = Unmanaged.passRetained(context)

        // libcurl writes into this during perform, so it must outlive every setopt call (an inout array pointer
        // would not).
        errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        for (name, value) in request.headers {
            headerList = curl_slist_append(headerList, "\(name): \(value)")
        }
        if request.body != nil && !request.headers.contains(where: { $0.0.lowercased() == "content-type" }) {
            headerList = curl_slist_append(headerList, "Content-Type: application/json")
        }
        // libcurl would otherwise send "Expect: 100-continue" and wait for the server on larger bodies.
        headerList = curl_slist_append(headerList, "Expect:")
        let write: fem_curl_data_cb = { data, size, count, user in
            let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
            let n = size * count
            let buffer = UnsafeRawBufferPointer(start: data, count: n)
            if ctx.cancel?.isCancelled == true { return 0 }
            ctx.received += Int64(n)
            if ctx.received > ctx.maxBody {
                // A server that sent no length, or a wrong one: the running count stops it.
                ctx.tooLarge = true
                return 0
            }
            if let sink = ctx.sink {
                if !sink(buffer) {
                    ctx.aborted = true
                    return 0  // a short count makes libcurl stop with CURLE_WRITE_ERROR
                }
            } else {
                ctx.collected.append(contentsOf: buffer)
            }
            return n
        }

        let header: fem_curl_data_cb = { data, size, count, user in
            let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
            let n = size * count
            let line = UnsafeRawBufferPointer(start: data, count: n)
            if line.starts(with: Array("HTTP/".utf8)) {
                let printable = line.prefix(200).filter { $0 >= 0x20 && $0 < 0x7f }
                let text = String(decoding: printable, as: UTF8.self)
                // "HTTP/1.1 401 Unauthorized" -> "401 Unauthorized"
                ctx.statusLine = String(text.drop { $0 != " " }.dropFirst().prefix(100))
            }
            return n
        }

        var setup: [CURLcode] = []
        setup.append(fem_curl_setopt_string(handle, CURLOPT_URL, request.url))
        setup.append(fem_curl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, request.method))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeoutSeconds * 1000))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, request.timeoutMilliseconds ?? request.timeoutSeconds * 1000))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2))
        setup.append(fem_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, headerList))
        setup.append(fem_curl_setopt_datafn(handle, CURLOPT_WRITEFUNCTION, write))
        setup.append(fem_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, unmanaged.toOpaque()))
        setup.append(fem_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer))
        setup.append(fem_curl_setopt_datafn(handle, CURLOPT_HEADERFUNCTION, header))
        setup.append(fem_curl_setopt_pointer(handle, CURLOPT_HEADERDATA, unmanaged.toOpaque()))
        // Only the protocols this request needs, and never a redirect: an allowlist checked the URL given here,
        // not wherever a server might send the client next.
        setup.append(fem_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, request.protocols))
        setup.append(fem_curl_setopt_string(handle, CURLOPT_REDIR_PROTOCOLS_STR, request.protocols))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0))
        setup.append(fem_curl_setopt_long(handle, CURLOPT_MAXREDIRS, 0))
        if let max = request.maxBodyBytes {
            setup.append(fem_curl_setopt_offset(handle, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(max)))
        }
        if request.cancel != nil {
            // libcurl calls this about once a second even while nothing moves; non-zero stops the transfer.
            let progress: fem_curl_xferinfo_cb = { user, _, _, _, _ in
                let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                return ctx.cancel?.isCancelled == true ? 1 : 0
            }
            setup.append(fem_curl_setopt_xferinfofn(handle, progress))
            setup.append(fem_curl_setopt_pointer(handle, CURLOPT_XFERINFODATA, unmanaged.toOpaque()))
            setup.append(fem_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0))
        }
        if let socket = request.unixSocket {
            setup.append(fem_curl_setopt_string(handle, CURLOPT_UNIX_SOCKET_PATH, socket))
        }
        if let stall = request.stallSeconds {
            setup.append(fem_curl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1))
            setup.append(fem_curl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, stall))
        }
        if let path = request.bodyFile {
            context.upload = open(path, O_RDONLY | O_CLOEXEC)
            guard context.upload >= 0 else {
                throw HTTPError(code: .setup, message: "\(request.method) \(request.url): cannot open \(path)")
            }
            var st = stat()
            fstat(context.upload, &st)
            context.expected = request.bodyExpected
            let read: fem_curl_data_cb = { data, size, count, user in
                let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                while true {
                    let n = Glibc.read(ctx.upload, data, size * count)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return Int(CURL_READFUNC_ABORT)
                    }
                    guard let expected = ctx.expected else { return n }
                    // Hash while sending; the chunk that completes the body goes only if the whole body matches.
                    if ctx.sent + Int64(n) > expected.size || (n == 0 && ctx.sent < expected.size) {
                        ctx.bodyChanged = true
                        return Int(CURL_READFUNC_ABORT)
                    }
                    if n == 0 { return 0 }
                    ctx.digest.update(UnsafeRawBufferPointer(start: data, count: n))
                    ctx.sent += Int64(n)
                    if ctx.sent == expected.size, ctx.digest.finalizeHex() != expected.sha256 {
                        ctx.bodyChanged = true
                        return Int(CURL_READFUNC_ABORT)
                    }
                    return n
                }
            }
            setup.append(fem_curl_setopt_long(handle, CURLOPT_UPLOAD, 1))
            let announced = request.bodyExpected?.size ?? Int64(st.st_size)
            setup.append(fem_curl_setopt_offset(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(announced)))
            setup.append(fem_curl_setopt_datafn(handle, CURLOPT_READFUNCTION, read))
            setup.append(fem_curl_setopt_pointer(handle, CURLOPT_READDATA, unmanaged.toOpaque()))
        }
        if let ca = request.caFile {
            // A private CA in addition to the system's (OpenSSL reads both the file and the folder).
            setup.append(fem_curl_setopt_string(handle, CURLOPT_CAINFO, ca))
            setup.append(fem_curl_setopt_string(handle, CURLOPT_CAPATH, "/etc/ssl/certs"))
        }
        if let body = request.body {
            // Copied by libcurl: the request's bytes need not outlive this call.
            setup.append(fem_curl_setopt_offset(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count)))
            setup.append((body + [0]).withUnsafeBytes {
                fem_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0.baseAddress))
            })
        }
        if let bad = setup.first(where: { $0 != CURLE_OK }) {
            throw HTTPError(code: .setup, message: "libcurl setup failed: \(String(cString: curl_easy_strerror(bad)))")
        }
    }

    /// The answer for libcurl's result `code`, or the error it means.
    func finish(_ code: CURLcode) throws -> HTTPResponse {
        if code != CURLE_OK {
            let detail = String(cString: errorBuffer).isEmpty ? String(cString: curl_easy_strerror(code))
                : String(cString: errorBuffer)
            let place = request.unixSocket.map { "\(request.url) via \($0)" } ?? request.url
            if context.cancel?.isCancelled == true {
                throw HTTPError(code: .cancelled, message: "\(request.method) \(place): cancelled")
            }
            if context.tooLarge || code == CURLE_FILESIZE_EXCEEDED {
                throw HTTPError(code: .tooLarge, message: "\(request.method) \(place): the answer is larger than "
                                + "\(request.maxBodyBytes ?? 0) bytes")
            }
            if context.bodyChanged {
                throw HTTPError(code: .bodyChanged, message: "\(request.method) \(place): the file no longer matches its "
                                + "approved size and sha256; the upload was stopped before its last byte")
            }
            if context.aborted {
                throw HTTPError(code: .aborted, message: "\(request.method) \(place): stopped by the receiver")
            }
            let kind: HTTPError.Code
            switch code {
            case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST: kind = .connect
            case CURLE_OPERATION_TIMEDOUT: kind = .timeout
            case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CACERT_BADFILE: kind = .tls
            default: kind = .transfer
            }
            throw HTTPError(code: kind, message: "\(request.method) \(place): \(detail)")
        }
        var status = 0
        _ = fem_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, body: context.collected, statusLine: context.statusLine)
    }
}
