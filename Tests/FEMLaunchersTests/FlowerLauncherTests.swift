import FEMCore
import FEMLaunchers
import Foundation
import Testing

/// The Flower launcher's reading of SuperNode log lines, and its node policy. The federation itself runs in
/// IntegrationTests/FlowerTests.
@Suite
struct FlowerLauncherTests {
    let launcher = FlowerLauncher(config: FlowerLauncherConfig(
        python: "/usr/bin/python3", venvDir: "/tmp/venvs", wheelDir: nil, allowInsecure: false, rootCertificates: nil,
        connectAttempts: 2, retryDelay: .milliseconds(10), unreachableLimit: .seconds(30)))

    @Test func superNodeLinesBecomeSignals() {
        let esc = "\u{1B}"
        #expect(launcher.signal(in: "\(esc)[92mINFO \(esc)[0m:      SuperNode ID: 17751755724296302854")
                == .connected("connected to the SuperLink (SuperNode ID 17751755724296302854)"))
        #expect(launcher.signal(in: "\(esc)[93mWARNING \(esc)[0m:   Connection attempt failed, retrying in 1.72 seconds")
                == .disconnected("cannot reach the SuperLink (the SuperNode keeps retrying)"))
        // The messages a SuperNode takes and the replies it delivers (followed after the ClientApp says Finished).
        #expect(launcher.signal(in: "\(esc)[92mINFO \(esc)[0m:      Received successfully\r") == .messageReceived)
        #expect(launcher.signal(in: "\(esc)[92mINFO \(esc)[0m:      Sent successfully") == .replySent)
        #expect(launcher.signal(in: "INFO :      Sending: evaluate message (ID: f5e0)") == nil)
    }
}
