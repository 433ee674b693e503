@testable import FEMCtl
import FEMTransport
import Foundation
import Testing

/// femctl's broker settings: flags, then the injected environment, then the development broker's files.
struct BrokerOptionsTests {
    @Test func defaultsAreTheDevelopmentBroker() throws {
        let e = try BrokerOptions.parse([]).endpoint(environment: [:])
        #expect(e.host == "localhost" && e.port == 5671 && e.vhost == "/" && e.user == "fem-orchestrator")
        #expect(e.caFile == "var/dev-broker/ca.pem" && e.certFile == "var/dev-broker/operator.pem")
        #expect(e.keyFile == "var/dev-broker/operator.key")
    }

    /// A password file the operator named and that cannot be read is an error naming the flag, not an empty login.
    @Test func anUnreadableNamedPasswordFileIsAnError() throws {
        #expect {
            _ = try BrokerOptions.parse(["--password-file", "/nonexistent/pw"]).endpoint(environment: [:])
        } throws: { "\($0)".contains("--password-file: cannot read /nonexistent/pw") }
        #expect {
            _ = try BrokerOptions.parse([]).endpoint(environment: ["FEMCTL_PASSWORD_FILE": "/nonexistent/pw"])
        } throws: { "\($0)".contains("FEMCTL_PASSWORD_FILE: cannot read /nonexistent/pw") }
    }

    /// A broker URL with a password, parseable or not, never shows the password in a message.
    @Test func messagesNeverShowAURLPassword() {
        for url in ["amqps://u:s3cret@h/", "amqps://u:s3 cret@h:5671/v", "amqp://u:s3cret@h", "amqps://u:p@ss:s3cret@h/"] {
            #expect(!BrokerURL.redacted(url).contains("s3"), "\(BrokerURL.redacted(url))")
            #expect(BrokerURL.redacted(url).contains("u:***@"), "\(BrokerURL.redacted(url))")
            do {
                _ = try BrokerURL.parse(url, password: nil, caFile: "", certFile: "", keyFile: "")
                Issue.record("\(url) was accepted")
            } catch {
                #expect(!error.description.contains("s3"), "\(error.description)")
            }
        }
        #expect(BrokerURL.redacted("amqps://ops@h/") == "amqps://ops@h/")
    }

    @Test func environmentThenFlags() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("femctl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "from-file\n".write(toFile: "\(dir)/pw", atomically: true, encoding: .utf8)
        let env = ["FEMCTL_BROKER_URL": "amqps://ops@broker.example:5999/prod", "FEMCTL_CA_FILE": "/e/ca.pem",
                   "FEMCTL_CERT_FILE": "/e/c.pem", "FEMCTL_KEY_FILE": "/e/c.key", "FEMCTL_PASSWORD_FILE": "\(dir)/pw"]
        let e = try BrokerOptions.parse([]).endpoint(environment: env)
        #expect(e.host == "broker.example" && e.port == 5999 && e.vhost == "prod" && e.user == "ops")
        #expect(e.caFile == "/e/ca.pem" && e.certFile == "/e/c.pem" && e.keyFile == "/e/c.key")
        #expect(e.password == "from-file")
        var withPassword = env
        withPassword["FEMCTL_BROKER_PASSWORD"] = "from-env"
        #expect(try BrokerOptions.parse([]).endpoint(environment: withPassword).password == "from-env")
        let f = try BrokerOptions.parse(["--broker-url", "amqps://flag@h/", "--ca", "/f/ca.pem"]).endpoint(environment: env)
        #expect(f.user == "flag" && f.host == "h" && f.caFile == "/f/ca.pem" && f.certFile == "/e/c.pem")
    }

    @Test func badURLNamesTheFlagAndHidesThePassword() {
        do {
            _ = try BrokerOptions.parse(["--broker-url", "amqps://ops:hunter2@h/"]).endpoint(environment: [:])
            Issue.record("a URL with a password was accepted")
        } catch {
            let text = "\(error)"
            #expect(text.contains("--broker-url: must not contain a password"), "\(text)")
            #expect(!text.contains("hunter2"))
        }
        #expect(throws: (any Error).self) {
            try BrokerOptions.parse(["--broker-url", "amqp://ops@h/"]).endpoint(environment: [:])
        }
    }
}
