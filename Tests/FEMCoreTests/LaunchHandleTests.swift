@testable import FEMCore
import Foundation
import Testing

/// Launch handles carry each launcher's typed, versioned state, and still read what older daemons journaled.
struct LaunchHandleTests {
    struct ProcessLike: LauncherState {
        static let version = 2
        var pid: Int32
        var startTime: UInt64
        var cgroup: String?
        init(pid: Int32, startTime: UInt64, cgroup: String?) {
            self.pid = pid
            self.startTime = startTime
            self.cgroup = cgroup
        }
        init?(legacy data: [String: String]) {
            guard let pid = data["pid"].flatMap({ Int32($0) }) else { return nil }
            self.init(pid: pid, startTime: data["start_time"].flatMap { UInt64($0) } ?? 0, cgroup: data["cgroup"])
        }
    }

    struct Newer: LauncherState {
        static let version = 3
        var pid: Int32
        init?(legacy data: [String: String]) { nil }
    }

    @Test func aTypedStateGoesThroughTheJournalsJSONUnchanged() throws {
        let state = ProcessLike(pid: 4242, startTime: 123_456_789_012, cgroup: "/fem-client/n/t (v2)")
        let handle = LaunchHandle(launcher: "process", state: state)
        #expect(handle.version == 2)
        let json = try JSONEncoder.fem.encode(handle)
        let back = try JSONDecoder.fem.decode(LaunchHandle.self, from: json)
        #expect(back == handle)
        #expect(try back.state(as: ProcessLike.self) == state)
        let object = try JSONValue.parse(json)
        #expect(object["version"] == 2 && object["state"]?["pid"] == 4242 && object["data"] == nil)
    }

    @Test func aVersionOneHandleIsReadThroughTheLegacyInit() throws {
        let old = #"{"launcher":"process","version":1,"data":{"pid":"42","start_time":"7"}}"#
        let handle = try JSONDecoder.fem.decode(LaunchHandle.self, from: Data(old.utf8))
        #expect(handle.version == 1)
        #expect(try handle.state(as: ProcessLike.self) == ProcessLike(pid: 42, startTime: 7, cgroup: nil))
        #expect(handle == LaunchHandle(launcher: "process", legacy: ["pid": "42", "start_time": "7"]))
    }

    @Test func aHandleThatDoesNotDescribeTheWorkSaysWhy() throws {
        let unreadable = LaunchHandle(launcher: "process", legacy: ["container": "abc"])
        #expect { try unreadable.state(as: ProcessLike.self) } throws: { error in
            "\(error)" == "the process handle (version 1) does not describe its work: container"
        }
        let fromTheFuture = LaunchHandle(launcher: "process", state: Newer(pid: 1))
        #expect { try fromTheFuture.state(as: ProcessLike.self) } throws: { error in
            "\(error)".contains("version 3, newer than this daemon's 2")
        }
        var mangled = LaunchHandle(launcher: "process", state: ProcessLike(pid: 1, startTime: 1, cgroup: nil))
        mangled.state = ["pid": "not a number"]
        #expect { try mangled.state(as: ProcessLike.self) } throws: { error in
            "\(error)".hasPrefix("the process handle (version 2) cannot be read:")
        }
    }
}

extension LaunchHandleTests.Newer {
    init(pid: Int32) { self.pid = pid }
}
