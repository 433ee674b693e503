import FEMCore
import Foundation
import Testing

/// The docs cannot drift from the code: every command block marked to run (a fence with the info string
/// `bash test`) runs here, as written, from a scratch folder that looks like a checkout (`docs/`, `scripts/`, and
/// `.build/release/` holding the binaries under test) against the test services (dockerd, the registry on
/// 127.0.0.1:5000); the commands the docs name are commands the tools have; and the completions and manual pages
/// `install.sh` installs cover every command.
@Suite(.serialized)
struct DocsTests {
    /// The documents whose blocks are checked, relative to the checkout.
    static let documents = ["README.md", "docs/flower.md", "docs/operations.md", "docs/protocol.md", "docs/security.md",
                            "docs/architecture.md", "docs/templates/README.md"]

    struct Block: CustomStringConvertible {
        var file: String
        var line: Int
        var info: String
        var text: String
        var description: String { "\(file):\(line)" }
    }

    /// Every fenced block of a Markdown file, with its info string and the line its fence opens on.
    static func blocks(_ file: String) throws -> [Block] {
        let text = try String(contentsOfFile: "\(TestEnv.repoRoot)/\(file)", encoding: .utf8)
        var blocks: [Block] = []
        var open: (line: Int, info: String, lines: [String])?
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.hasPrefix("```") {
                if let o = open {
                    blocks.append(Block(file: file, line: o.line, info: o.info, text: o.lines.joined(separator: "\n") + "\n"))
                    open = nil
                } else {
                    open = (i + 1, String(line.dropFirst(3)).trimmingCharacters(in: .whitespaces), [])
                }
            } else if open != nil {
                open?.lines.append(String(line))
            }
        }
        return blocks
    }

    /// A folder laid out like a checkout, with the binaries under test as `.build/release`.
    static func checkoutLike(_ name: String) throws -> String {
        let dir = try TestEnv.scratch(name)
        let fm = FileManager.default
        try fm.createDirectory(atPath: "\(dir)/.build", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: "\(dir)/.build/release", withDestinationPath: TestEnv.binDir)
        for sub in ["docs", "scripts"] {
            try fm.createSymbolicLink(atPath: "\(dir)/\(sub)", withDestinationPath: "\(TestEnv.repoRoot)/\(sub)")
        }
        return dir
    }

    static func runBlock(_ block: Block, in dir: String) throws -> (status: Int32, output: String) {
        let script = "\(dir)/block-\(block.line).sh"
        try block.text.write(toFile: script, atomically: true, encoding: .utf8)
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = TestEnv.binDir + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        env.removeValue(forKey: "FEM_CONFIG")
        return try Shell.run(["/bin/bash", "-e", "-u", "-o", "pipefail", script], environment: env, cwd: dir)
    }

    @Test func theMarkedBlocksRunAsWritten() throws {
        var marked: [Block] = []
        for file in Self.documents { marked += try Self.blocks(file).filter { $0.info == "bash test" } }
        // The README's authoring and docker blocks at least: a marker lost in an edit is a failure, not a skip.
        #expect(marked.filter { $0.file == "README.md" }.count >= 3, "\(marked)")
        #expect(marked.contains { $0.text.contains("hello-docker.task.json --config") }, "the docker example is marked")
        // Dockerd and the registry the docker example pulls from must be there: say so, rather than a cryptic failure.
        let docker = try Shell.run(["/usr/bin/curl", "-sf", "--unix-socket", "/var/run/docker.sock",
                                    "http://localhost/v1.41/_ping"])
        #expect(docker.status == 0, "no dockerd answers on /var/run/docker.sock (the test services start one)")
        let registry = try Shell.run(["/usr/bin/curl", "-sf", "http://127.0.0.1:5000/v2/fem/busybox/tags/list"])
        #expect(registry.status == 0 && registry.output.contains("1.36"),
                "no registry on 127.0.0.1:5000 with fem/busybox:1.36 (scripts/dev-registry.sh): \(registry.output)")
        for file in Set(marked.map(\.file)).sorted() {
            // One checkout-like folder per document: its blocks run in order, as a reader would run them.
            let dir = try Self.checkoutLike("docs-\(URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent)")
            for block in marked where block.file == file {
                let r = try Self.runBlock(block, in: dir)
                #expect(r.status == 0, "\(block) exited \(r.status):\n\(block.text)\n---\n\(r.output)")
            }
        }
    }

    /// What the blocks say: the docker example counted its three lines, and the authoring block ran a plan.
    @Test func theDockerExampleCountsTheDataset() throws {
        let blocks = try Self.blocks("README.md").filter { $0.info == "bash test" }
        let dockerBlock = try #require(blocks.first { $0.text.contains("hello-docker.task.json --config") })
        let dir = try Self.checkoutLike("docs-docker")
        let r = try Self.runBlock(dockerBlock, in: dir)
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("state    completed"), "\(r.output)")
        #expect(r.output.hasSuffix("3\n"), "the last command prints the count: \(r.output)")
    }

    /// `fem-client <word>` and `femctl <word>` in the docs' command blocks are commands the tools have.
    @Test func theCommandsTheDocsNameExist() throws {
        var known: [String: Set<String>] = [:]
        for tool in ["fem-client", "femctl"] {
            let dump = try Shell.run([try TestEnv.binary(tool), "--experimental-dump-help"])
            let tree = try JSONValue.parse(Data(dump.output.utf8))
            guard case .array(let subs)? = tree["command"]?["subcommands"] else {
                Issue.record("\(tool) --experimental-dump-help: no subcommands: \(dump.output.prefix(200))")
                continue
            }
            known[tool] = Set(subs.compactMap { $0["commandName"]?.stringValue })
        }
        let pattern = try NSRegularExpression(pattern: #"(?:^|[\s/`])(fem-client|femctl) ([a-z][a-z-]*)"#)
        var checked = 0
        for file in Self.documents {
            for block in try Self.blocks(file) where ["sh", "bash", "bash test"].contains(block.info) {
                let ns = block.text as NSString
                for m in pattern.matches(in: block.text, range: NSRange(location: 0, length: ns.length)) {
                    let tool = ns.substring(with: m.range(at: 1))
                    let word = ns.substring(with: m.range(at: 2))
                    checked += 1
                    #expect(known[tool]?.contains(word) == true, "\(block): `\(tool) \(word)` is not a \(tool) command")
                }
            }
        }
        #expect(checked >= 20, "the docs name \(checked) commands")
    }

    /// install.sh's completions and manual pages (scripts/install-shell-docs.sh): every subcommand is completed, and
    /// the pages render with man and groff without a warning.
    @Test func completionsAndManualPagesCoverEveryCommand() throws {
        for tool in ["/usr/bin/man", "/usr/bin/groff", "/usr/bin/python3"] {
            try #require(FileManager.default.isExecutableFile(atPath: tool),
                         "\(tool) is missing: apt-get install man-db groff-base python3 (Debian's standard system has them)")
        }
        let prefix = try TestEnv.scratch("shell-docs")
        let r = try Shell.run(["/bin/bash", "\(TestEnv.repoRoot)/scripts/install-shell-docs.sh", "--bin", TestEnv.binDir,
                               "--prefix", prefix])
        #expect(r.status == 0, "\(r.output)")
        let share = "\(prefix)/share"
        for tool in ["fem-client", "femctl"] {
            let dump = try Shell.run([try TestEnv.binary(tool), "--experimental-dump-help"])
            let tree = try JSONValue.parse(Data(dump.output.utf8))
            var commands: [String] = []
            func walk(_ node: JSONValue?, _ path: [String]) {
                guard case .array(let subs)? = node?["subcommands"] else { return }
                for s in subs {
                    guard let name = s["commandName"]?.stringValue, name != "help" else { continue }
                    commands.append((path + [name]).joined(separator: " "))
                    walk(s, path + [name])
                }
            }
            walk(tree["command"], [])
            #expect(commands.count >= 4, "\(tool): \(commands)")
            let completions = ["\(share)/bash-completion/completions/\(tool)", "\(share)/zsh/site-functions/_\(tool)",
                               "\(share)/fish/vendor_completions.d/\(tool).fish"]
            for file in completions {
                let text = try String(contentsOfFile: file, encoding: .utf8)
                for command in commands {
                    let leaf = command.split(separator: " ").last.map(String.init) ?? command
                    #expect(text.contains(leaf), "\(file) does not complete `\(tool) \(command)`")
                }
            }
            let page = "\(share)/man/man1/\(tool).1"
            var env = ProcessInfo.processInfo.environment
            env["MANWIDTH"] = "120"
            env["MANPAGER"] = "cat"
            env["PAGER"] = "cat"
            let man = try Shell.run(["/usr/bin/man", "-l", page], environment: env)
            #expect(man.status == 0, "man -l \(page): \(man.output)")
            #expect(man.output.contains("\(tool.uppercased())(1)") && man.output.contains("EXIT STATUS"), "\(man.output)")
            for command in commands {
                #expect(man.output.contains("\(tool) \(command)"), "\(page) does not describe `\(tool) \(command)`")
            }
            // groff's own check: no warning at all (-ww), output discarded (-z).
            let groff = try Shell.run(["/usr/bin/groff", "-man", "-Tutf8", "-ww", "-z", page])
            #expect(groff.status == 0 && groff.output.isEmpty, "groff warns about \(page): \(groff.output)")
        }
    }
}
