import Foundation

/// The runner's time for timeouts, stop grace, link limits, finish delivery, cancel deadlines and journal retries:
/// any clock that measures in `Duration` (`ContinuousClock` in the daemon, a faster one in unit tests, so that a
/// timeout test takes milliseconds), read as the time passed since this value was made.
///
/// Journal timestamps stay wall-clock `Date`s: they are what the orchestrator sees.
public struct RunnerClock: Sendable {
    private let elapsed: @Sendable () -> Duration
    private let sleeper: @Sendable (Duration) async throws -> Void

    public init<C: Clock>(_ clock: C) where C.Duration == Duration {
        let origin = clock.now
        elapsed = { origin.duration(to: clock.now) }
        sleeper = { try await clock.sleep(for: $0) }
    }

    /// The clock the daemon runs on.
    public static var continuous: RunnerClock { RunnerClock(ContinuousClock()) }

    /// Time since this value was made: a monotonic point to compare with later ones.
    public var now: Duration { elapsed() }

    /// Sleeps for `duration` on the clock; throws `CancellationError` when the task is cancelled first.
    public func sleep(for duration: Duration) async throws {
        try await sleeper(duration)
    }
}
