import FEMStaging
import Foundation
import Testing

/// Secrets named by `password_env`/`token_env` come from the environment the daemon was given (injected), and a
/// missing one is named by its setting and variable, never by any value.
struct SecretSourceTests {
    @Test func anEnvironmentSecretComesFromTheInjectedEnvironment() throws {
        let env = ["GIT_TOKEN": "tok-123", "OTHER": "unrelated"]
        #expect(try SecretSource.environment("GIT_TOKEN").read(field: "credentials.\"git\".token_env", environment: env)
                == "tok-123")
    }

    @Test func aMissingVariableNamesTheCredentialAndTheVariableOnly() {
        // HOME is set in the test process: only the injected environment counts.
        let env = ["OTHER_SECRET": "hunter2", "EMPTY": ""]
        for name in ["GIT_TOKEN", "HOME", "EMPTY"] {
            do {
                _ = try SecretSource.environment(name).read(field: "credentials.\"git\".token_env", environment: env)
                Issue.record("\(name) was read although the injected environment does not have it")
            } catch {
                #expect(error.description == "credentials.\"git\".token_env: \(name) is not set")
                #expect(!error.description.contains("hunter2"))
            }
        }
    }

    @Test func aFileSecretIsTrimmedAndAnUnreadableFileIsNamed() throws {
        let path = NSTemporaryDirectory() + "fem-secret-\(UUID().uuidString)"
        try "s3cret\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try SecretSource.file(path).read(field: "broker.password_file", environment: [:]) == "s3cret")
        #expect(throws: SecretSourceError.self) {
            try SecretSource.file(path + ".missing").read(field: "broker.password_file", environment: [:])
        }
        do {
            _ = try SecretSource.file(path + ".missing").read(field: "broker.password_file", environment: [:])
        } catch {
            #expect(error.description == "broker.password_file: cannot read \(path).missing")
        }
    }
}
