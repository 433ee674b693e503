import Foundation

/// A clock on which time runs `speed` times faster than on `ContinuousClock`: the runner's timeouts, stop grace, link
/// limits and retry delays pass in a thousandth of their time, so a test of a 1 s timeout takes about a millisecond
/// and still runs the real code path (a sleep that ends, not a sleep skipped).
struct FastClock: Clock {
    struct Instant: InstantProtocol {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    var speed = 1000
    private let base = ContinuousClock.now

    var now: Instant { Instant(offset: (ContinuousClock.now - base) * speed) }
    var minimumResolution: Duration { .nanoseconds(1) }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let left = now.duration(to: deadline)
        guard left > .zero else { return try Task.checkCancellation() }
        try await Task.sleep(for: left / speed)
    }
}
