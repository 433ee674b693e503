@testable import FEMCore
@testable import FEMStaging
import FEMSystem
import Foundation
import Testing

/// `ImageStageIn.pin`: the approved digest is found whatever name dockerd files it under, and the image runs by it.
struct ImagePinTests {
    let plan = ToolPlan(schemaVersion: 1, id: "t", version: "1", description: nil, launcher: "docker", image: nil,
                        pullPolicy: nil, source: nil, command: PlanCommand(base: ["x"], args: []), env: [:], inputs: [],
                        outputs: [], resources: .none, network: .none, timeoutSeconds: nil, flower: nil)
    let a = "sha256:" + String(repeating: "a", count: 64), b = "sha256:" + String(repeating: "b", count: 64)

    func info(_ digests: [String]) throws -> DockerEngine.ImageInfo {
        try JSONDecoder().decode(DockerEngine.ImageInfo.self,
                                 from: JSONSerialization.data(withJSONObject: ["Id": "sha256:id", "RepoDigests": digests]))
    }

    @Test func aDockerHubNameMatchesTheShortNameDockerdReports() throws {
        #expect(try ImageStageIn.pin("docker.io/library/alpine:3", info: info(["alpine@\(a)"]), to: a, plan: plan)
                == "docker.io/library/alpine@\(a)")
    }

    @Test func aTagAndDigestReferenceRunsByTheRepositoryAndTheDigest() throws {
        #expect(try ImageStageIn.pin("127.0.0.1:5000/tool:1@\(a)", info: info(["127.0.0.1:5000/tool@\(a)"]), to: a,
                                     plan: plan) == "127.0.0.1:5000/tool@\(a)")
        #expect(DockerEngine.repository("127.0.0.1:5000/tool:1") == "127.0.0.1:5000/tool")
        #expect(DockerEngine.repository("tool") == "tool")
    }

    @Test func aMovedTagIsDeclinedNamingBothDigests() throws {
        do {
            _ = try ImageStageIn.pin("127.0.0.1:5000/tool:1", info: info(["127.0.0.1:5000/tool@\(b)"]), to: a, plan: plan)
            Issue.record("a moved tag was accepted")
        } catch let d as PolicyDecline {
            #expect(d.reason.contains(a) && d.reason.contains(b) && d.reason.contains("the tag was moved"), "\(d.reason)")
        }
    }
}
