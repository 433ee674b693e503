@testable import FEMNode
import Foundation
import Testing

/// The console's bounds on password guessing (`LoginThrottle`), with the time given.
struct ConsoleThrottleTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func fail(_ t: LoginThrottle, _ name: String, at: Date) -> TimeInterval? {
        #expect(t.admit(name, now: at) == nil, "a login for \(name) was not checked")
        return t.finish(name, succeeded: false, now: at)
    }

    @Test func fiveFailuresLockTheAccountForAMinuteThenLonger() {
        let t = LoginThrottle()
        for i in 0..<4 { #expect(fail(t, "alice", at: t0.addingTimeInterval(Double(i))) == nil) }
        #expect(fail(t, "alice", at: t0.addingTimeInterval(4)) == 60, "the fifth failure locks for 60 s")
        let refused = t.admit("alice", now: t0.addingTimeInterval(30))
        #expect(refused == "Too many failed logins for this account: try again in 34 s.")
        #expect(t.admit("bob", now: t0.addingTimeInterval(30)) == nil, "another account is not locked")
        t.finish("bob", succeeded: true, now: t0.addingTimeInterval(30))
        // After the lock: five more failures lock it for twice as long.
        for i in 0..<4 { #expect(fail(t, "alice", at: t0.addingTimeInterval(70 + Double(i))) == nil) }
        #expect(fail(t, "alice", at: t0.addingTimeInterval(75)) == 120)
    }

    @Test func aSuccessClearsFailuresAndOldFailuresExpire() {
        let t = LoginThrottle()
        for i in 0..<4 { _ = fail(t, "alice", at: t0.addingTimeInterval(Double(i))) }
        #expect(t.admit("alice", now: t0.addingTimeInterval(5)) == nil)
        t.finish("alice", succeeded: true, now: t0.addingTimeInterval(5))
        for i in 0..<4 { #expect(fail(t, "alice", at: t0.addingTimeInterval(10 + Double(i))) == nil) }
        // Sixteen minutes later the four failures above are out of the window: one more does not lock.
        #expect(fail(t, "alice", at: t0.addingTimeInterval(10 + 16 * 60)) == nil)
    }

    @Test func loginsCheckedAtOnceAndFailuresPerMinuteAreBounded() {
        let t = LoginThrottle()
        for i in 0..<LoginThrottle.maxInFlight { #expect(t.admit("n\(i)", now: t0) == nil) }
        #expect(t.admit("another", now: t0) == "The console is busy checking other logins: try again.")
        for i in 0..<LoginThrottle.maxInFlight { t.finish("n\(i)", succeeded: false, now: t0) }
        // Many names, few tries each: the console as a whole stops checking for the rest of the minute.
        for i in LoginThrottle.maxInFlight..<LoginThrottle.consoleFailuresPerMinute { _ = fail(t, "n\(i)", at: t0) }
        #expect(t.admit("alice", now: t0.addingTimeInterval(1))
                == "Too many failed logins on this console in the last minute: try again in a minute.")
        #expect(t.admit("alice", now: t0.addingTimeInterval(61)) == nil)
    }
}
