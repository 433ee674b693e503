import Foundation

/// Runs a blocking call (libcurl, waitpid) on a thread of its own, so it never holds one of the few threads of
/// Swift's cooperative pool (two on a two-core node).
public func offload<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        let thread = Thread {
            continuation.resume(with: Result { try body() })
        }
        thread.name = name
        thread.start()
    }
}

/// As `offload`, for a call that can be stopped: cancelling the calling Swift task sets the `CancelFlag` the body
/// receives, which it hands to the blocking call (its progress callbacks read it). Returns when the body returns;
/// a body that failed after a cancel throws `OperationCancelled` (the failure was the cancel's doing).
public func offload<T: Sendable>(_ name: String, cancellable body: @escaping @Sendable (CancelFlag) throws -> T)
    async throws -> T {
    let flag = CancelFlag()
    let result: Result<T, Error> = await withTaskCancellationHandler {
        await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, Error>, Never>) in
            let thread = Thread {
                continuation.resume(returning: Result { try body(flag) })
            }
            thread.name = name
            thread.start()
        }
    } onCancel: {
        flag.cancel()
    }
    if flag.isCancelled, case .failure = result { throw OperationCancelled(name) }
    return try result.get()
}
