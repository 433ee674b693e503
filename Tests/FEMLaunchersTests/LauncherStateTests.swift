import FEMCore
@testable import FEMLaunchers
import Foundation
import Testing

/// The launchers' handle states, and the handles older daemons journaled for them (version 1, string pairs): a
/// daemon upgraded while tasks run must still find their work.
struct LauncherStateTests {
    @Test func aHostProcessHandleOfAnOlderDaemonIsRead() throws {
        let old = #"{"launcher":"process","version":1,"data":{"pid":"4242","pgid":"4242","start_time":"99","cgroup":"/fem-client/n/t (v2)"}}"#
        let handle = try JSONDecoder.fem.decode(LaunchHandle.self, from: Data(old.utf8))
        #expect(try handle.state(as: HostProcessState.self)
                == HostProcessState(pid: 4242, pgid: 4242, startTime: 99, cgroup: "/fem-client/n/t (v2)"))
    }

    @Test func aContainerHandleOfAnOlderDaemonIsRead() throws {
        let old = #"{"launcher":"docker","version":1,"data":{"container":"abc123","stdout":"/s/logs/stdout.log","stderr":"/s/logs/stderr.log"}}"#
        let handle = try JSONDecoder.fem.decode(LaunchHandle.self, from: Data(old.utf8))
        #expect(try handle.state(as: ContainerHandleState.self)
                == ContainerHandleState(container: "abc123", stdout: "/s/logs/stdout.log", stderr: "/s/logs/stderr.log",
                                        cgroup: nil))
        #expect(throws: TaskFailure.self) { try handle.state(as: HostProcessState.self) }
    }

    @Test func typedStatesRoundTrip() throws {
        let process = HostProcessState(pid: 7, pgid: 7, startTime: 123, cgroup: nil)
        let container = ContainerHandleState(container: "c", stdout: "o", stderr: "e", cgroup: "/fem-client/n/t")
        for handle in [LaunchHandle(launcher: "process", state: process), LaunchHandle(launcher: "docker", state: container)] {
            let back = try JSONDecoder.fem.decode(LaunchHandle.self, from: JSONEncoder.fem.encode(handle))
            #expect(back == handle && back.version == 2)
        }
        #expect(try LaunchHandle(launcher: "process", state: process).state(as: HostProcessState.self) == process)
    }
}
