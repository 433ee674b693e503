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
