import Foundation

/// Runs a blocking call (libcurl, libgit2, cgroup files) on the bounded `BlockingPool`, so it never holds one of the
/// few threads of Swift's cooperative pool (two on a two-core node). It runs whatever happens to the calling task
/// (cleanup that must happen uses this); waits in the pool's queue when all its threads are busy.
public func offload<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await BlockingPool.shared.run(body)
}

/// As `offload`, for a call that can be stopped: cancelling the calling Swift task before the call started drops it
/// (`CancellationError`, the body never runs); once it runs, sets the `CancelFlag` the body receives, which it hands
/// to the blocking call (its progress callbacks read it). Returns when the body returns; a body that failed after a
/// cancel throws `OperationCancelled` (the failure was the cancel's doing).
public func offload<T: Sendable>(_ name: String, cancellable body: @escaping @Sendable (CancelFlag) throws -> T)
    async throws -> T {
    let flag = CancelFlag()
    do {
        return try await BlockingPool.shared.runIfActive(flag: flag, body)
    } catch let error where !(error is CancellationError) {
        if flag.isCancelled { throw OperationCancelled(name) }
        throw error
    }
}
