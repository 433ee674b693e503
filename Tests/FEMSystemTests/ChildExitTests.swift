import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Child exits reaped by the one event reactor (pidfd + epoll): no thread per child, no polling.
@Suite(.serialized)
struct ChildExitTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("fem-exit-\(UUID().uuidString)").path

    func spawn(_ script: String) throws -> ChildProcess.Spawned {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        return try ChildProcess.spawn(executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin"],
                                      workingDirectory: scratch, stdoutPath: "/dev/null", stderrPath: "/dev/null")
    }

    @Test func manyChildrenOneReactorThread() async throws {
        // Start the reactor's thread first so the count below measures only what the children add.
        let warm = try spawn("exit 0")
        #expect(await ChildProcess.exitStatus(of: warm.pid) == .exited(0))
        let children = try (0..<24).map { i in try spawn("read x < /dev/null; sleep 0.3; exit \(i % 5)") }
        let exits = children.map { ChildProcess.watchExit($0.pid) }
        let reactor = threads(named: "fem-events"), waiters = threads(named: "fem-wait")
        var statuses: [FEMSystem.ExitStatus] = []
        for exit in exits { statuses.append(await exit.wait()) }
        #expect(statuses == (0..<24).map { FEMSystem.ExitStatus.exited(Int32($0 % 5)) })
        #expect(reactor == 1 && waiters == 0, "24 children waited for by \(reactor) reactor and \(waiters) waiting threads")
    }

    @Test func signalsAndTimedWaits() async throws {
        let child = try spawn("exec sleep 300")
        let exit = ChildProcess.watchExit(child.pid)
        let t0 = ContinuousClock.now
        #expect(await exit.wait(upTo: .milliseconds(200)) == nil, "still running after 200 ms")
        // Far below the child's 300 s: the wait gave up on its own bound (a loaded machine may take seconds).
        #expect(ContinuousClock.now - t0 < .seconds(60))
        ChildProcess.signalGroup(child.pid, SIGTERM)
        #expect(await exit.wait(upTo: .seconds(10)) == .signaled(SIGTERM))
        #expect(await exit.wait() == .signaled(SIGTERM), "a later wait gets the same status")
    }

    @Test func aCancelledTimedWaitReturnsAtOnce() async throws {
        let child = try spawn("exec sleep 300")
        defer { ChildProcess.signalGroup(child.pid, SIGKILL) }
        let exit = ChildProcess.watchExit(child.pid)
        let waiter = Task { await exit.wait(upTo: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(50))
        let t0 = ContinuousClock.now
        waiter.cancel()
        #expect(await waiter.value == nil)
        #expect(ContinuousClock.now - t0 < .seconds(30), "returned on the cancel, not after its 60 s")
        ChildProcess.signalGroup(child.pid, SIGKILL)
        #expect(await exit.wait() == .signaled(SIGKILL))
    }

    @Test func aChildReapedElsewhereIsUnknownNotASignal() async throws {
        let child = try spawn("exit 3")
        #expect(ChildProcess.waitBlocking(pid: child.pid) == .exited(3))
        let status = await ChildProcess.exitStatus(of: child.pid)
        guard case .unknown = status else {
            Issue.record("ECHILD must be reported as unknown, got \(status)")
            return
        }
        #expect(ChildProcess.waitBlocking(pid: child.pid) != .signaled(0))
    }

    @Test func awaitExitsOfProcessesThatAreNotOurChildren() async throws {
        // A grandchild (its parent is the shell, not us): observed through its pidfd, not reaped.
        let child = try spawn("sleep 300 & echo $! > grandchild.pid; wait $!")
        defer { ChildProcess.signalGroup(child.pid, SIGKILL) }
        var grandchild: Int32?
        let deadline = Date().addingTimeInterval(5)
        while grandchild == nil, Date() < deadline {
            grandchild = (try? String(contentsOfFile: "\(scratch)/grandchild.pid", encoding: .utf8))
                .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if grandchild == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        let pid = try #require(grandchild)
        #expect(await ChildProcess.awaitExits(of: [pid], upTo: .milliseconds(100)) == false)
        kill(pid, SIGKILL)
        #expect(await ChildProcess.awaitExits(of: [pid], upTo: .seconds(10)))
        #expect(await ChildProcess.exitStatus(of: child.pid) == .exited(137))
    }
}

/// `ChildProcess.run` (a scheduler's client commands): a deadline and cancellation end a hung command.
struct CommandRunDeadlineTests {
    @Test func aCommandPastItsDeadlineIsKilled() async throws {
        let t0 = ContinuousClock.now
        await #expect(throws: CommandTimedOut.self) {
            _ = try await ChildProcess.run(executable: "/bin/sleep", arguments: ["300"],
                                           environment: ["PATH": "/usr/bin:/bin"], deadline: .milliseconds(300))
        }
        // Bounds far from the 300 s the command would take: a loaded machine may need seconds to spawn and reap.
        #expect(ContinuousClock.now - t0 < .seconds(120))
        // One that ignores SIGTERM is killed all the same.
        let t1 = ContinuousClock.now
        await #expect(throws: CommandTimedOut.self) {
            _ = try await ChildProcess.run(executable: "/bin/sh", arguments: ["-c", "trap '' TERM; while :; do sleep 0.1; done"],
                                           environment: ["PATH": "/usr/bin:/bin"], deadline: .milliseconds(300))
        }
        #expect(ContinuousClock.now - t1 < .seconds(120), "killed, although it ignores SIGTERM and never ends")
        let ok = try await ChildProcess.run(executable: "/bin/echo", arguments: ["hi"], environment: [:],
                                            deadline: .seconds(30))
        #expect(ok.succeeded && ok.stdout == "hi\n")
    }

    @Test func cancellingTheCallerKillsTheCommand() async throws {
        let t0 = ContinuousClock.now
        let run = Task {
            try await ChildProcess.run(executable: "/bin/sleep", arguments: ["300"], environment: [:])
        }
        try await Task.sleep(for: .milliseconds(300))
        run.cancel()
        await #expect(throws: CancellationError.self) { _ = try await run.value }
        #expect(ContinuousClock.now - t0 < .seconds(120), "ended on the cancel, not after its 300 s")
    }
}
