import CCurl
import Foundation
import Synchronization

/// Long-lived HTTP requests (a container's followed logs, a wait for its end, a stop's grace period) on one thread
/// for all of them: libcurl's multi interface, sleeping in `curl_multi_poll` until a socket has data, a timeout is
/// due, or a new request arrives (`curl_multi_wakeup`). A request here holds no thread of its own and none of the
/// `BlockingPool`'s, however long it runs.
///
/// Sinks run on this thread: they must be quick (append to a file) and never block.
public final class HTTPStreams: Sendable {
    public static let shared = HTTPStreams()

    private struct Multi: @unchecked Sendable {
        /// CURLM*: used by the streams thread only, except `curl_multi_wakeup`, which libcurl allows from any thread.
        let raw: UnsafeMutableRawPointer
    }
    private struct Submission: Sendable {
        let transfer: CurlTransfer
        let done: CheckedContinuation<HTTPResponse, Error>
    }
    private struct State {
        var incoming: [Submission] = []
        var started = false
        var active = 0
    }

    private let multi: Multi?
    private let state = Mutex(State())

    private init() {
        _ = HTTPTransfer.globalInit
        multi = curl_multi_init().map { Multi(raw: $0) }
    }

    /// Requests in flight (for tests and diagnostics).
    public var activeCount: Int { state.withLock { $0.active + $0.incoming.count } }

    /// Performs `request` on the streams thread, handing the body to `sink` as it arrives (nil: collect it).
    /// With `cancelWithTask`, cancelling the calling task stops the request within about a second
    /// (`HTTPError.cancelled`); without, only the request's own `cancel` flag does (a wait that must outlast a
    /// cancelled caller, as a blocking call would).
    public func perform(_ request: HTTPRequest, cancelWithTask: Bool = true,
                        sink: (@Sendable (UnsafeRawBufferPointer) -> Bool)? = nil) async throws -> HTTPResponse {
        var request = request
        let cancel = request.cancel ?? CancelFlag()
        request.cancel = cancel
        guard let multi else {
            // No multi handle (out of memory at start): the pool, as a plain blocking call.
            let r = request
            let call = { @Sendable () throws -> HTTPResponse in
                if let sink { return try HTTPTransfer.perform(r, sink: sink) }
                return try HTTPTransfer.perform(r)
            }
            return try await cancelWithTask ? BlockingPool.shared.runIfActive(flag: cancel) { _ in try call() }
                : BlockingPool.shared.run(call)
        }
        let transfer = try CurlTransfer(request, sink: sink)
        cancel.onCancel { _ = curl_multi_wakeup(multi.raw) }
        let submit = {
            try await withCheckedThrowingContinuation { (done: CheckedContinuation<HTTPResponse, Error>) in
                let start = self.state.withLock { s -> Bool in
                    s.incoming.append(Submission(transfer: transfer, done: done))
                    defer { s.started = true }
                    return !s.started
                }
                if start {
                    let thread = Thread { [self] in
                        nameThread("fem-http-streams")
                        self.loop(multi)
                    }
                    thread.name = "fem-http-streams"
                    thread.stackSize = 1 << 20
                    thread.start()
                } else {
                    curl_multi_wakeup(multi.raw)
                }
            }
        }
        guard cancelWithTask else { return try await submit() }
        // The transfer's progress callback reads the flag; setting it wakes the loop so that runs now.
        return try await withTaskCancellationHandler(operation: submit) { cancel.cancel() }
    }

    private func loop(_ multi: Multi) {
        var active: [UnsafeMutableRawPointer: Submission] = [:]
        while true {
            let incoming = state.withLock { s -> [Submission] in
                defer { s.incoming = [] }
                return s.incoming
            }
            for submission in incoming {
                let code = curl_multi_add_handle(multi.raw, submission.transfer.handle)
                if code != CURLM_OK {
                    submission.done.resume(throwing: HTTPError(
                        code: .setup, message: "libcurl: cannot add a stream (\(String(cString: curl_multi_strerror(code))))"))
                    continue
                }
                active[submission.transfer.handle] = submission
            }
            var running: Int32 = 0
            _ = curl_multi_perform(multi.raw, &running)
            var easy: UnsafeMutableRawPointer?
            var result = CURLE_OK
            while fem_curl_multi_next_done(multi.raw, &easy, &result) != 0 {
                guard let handle = easy, let submission = active.removeValue(forKey: handle) else { continue }
                curl_multi_remove_handle(multi.raw, handle)
                submission.done.resume(with: Result { try submission.transfer.finish(result) })
            }
            let count = active.count
            state.withLock { $0.active = count }
            // Sleeps until a socket is ready, libcurl's next timeout, or a wake-up (a new request, a cancel); while
            // requests run, at most a second (progress callbacks, which read cancel flags, run that often). Idle, it
            // sleeps until woken.
            var ready: Int32 = 0
            _ = curl_multi_poll(multi.raw, nil, 0, count == 0 ? 3_600_000 : 1000, &ready)
        }
    }
}
