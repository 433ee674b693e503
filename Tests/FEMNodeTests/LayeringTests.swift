import Foundation
import Testing

/// Keeps docs/architecture.md's layer rule true: raw system calls and the C modules only in FEMSystem (and the C
/// modules' own folders), and each target importing only what its layer may. Every hit is named by file:line.
struct LayeringTests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// The Swift targets and the project modules each may import (docs/architecture.md, "Layers"). A target folder
    /// under Sources/ that is not here fails `everyTargetHasALayer`: give it a layer here and in the doc.
    static let allowedImports: [String: Set<String>] = [
        // 2. The one layer that owns C pointers and raw system calls.
        "FEMSystem": ["CRabbitMQ", "CCurl", "CGit2", "CCrypto", "CLinux"],
        // 3. The core: no I/O, no project module.
        "FEMCore": [],
        // 4. Implementations of the core's ports: siblings never import each other.
        "FEMJournal": ["FEMCore"],
        "FEMTransport": ["FEMCore", "FEMSystem"],
        "FEMStaging": ["FEMCore", "FEMSystem"],
        "FEMLaunchers": ["FEMCore", "FEMSystem"],
        // 5. The daemon's composition root and the operator's side (broker only: no journal, no launchers), and the
        // executables that only call into them.
        "FEMCommandLine": ["FEMCore", "FEMSystem"],
        "FEMNode": ["FEMCore", "FEMSystem", "FEMJournal", "FEMTransport", "FEMStaging", "FEMLaunchers", "FEMCommandLine"],
        "FEMCtl": ["FEMCore", "FEMSystem", "FEMTransport", "FEMCommandLine"],
        "fem-client": ["FEMNode"],
        "femctl": ["FEMCtl"],
    ]

    /// C modules (layer 1): system-library folders with a module map, importable only by FEMSystem.
    static let cModules: Set<String> = ["CRabbitMQ", "CCurl", "CGit2", "CCrypto", "CLinux"]
    /// Platform C libraries: only FEMSystem imports them.
    static let platformModules: Set<String> = ["Glibc", "Musl", "Darwin", "Bionic", "Android", "WASILibc", "ucrt",
                                               "WinSDK", "CRT", "SwiftGlibc"]

    /// Raw libc calls that belong behind FEMSystem's `Posix` (or another FEMSystem type). Curated: the calls this
    /// code base has made, and their close relatives.
    static let rawCalls: [String] = [
        "open", "openat", "creat", "read", "pread", "write", "pwrite", "close", "lseek", "fsync", "fdatasync",
        "ftruncate", "truncate", "dup", "dup2", "dup3", "pipe", "pipe2", "poll", "select", "fcntl", "ioctl",
        "stat", "lstat", "fstat", "fstatat", "statvfs", "fstatvfs", "access", "faccessat", "realpath", "readlink",
        "symlink", "link", "linkat", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "unlink", "unlinkat",
        "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "umask", "utimensat",
        "opendir", "fdopendir", "readdir", "closedir", "rewinddir", "dirfd", "flock",
        "socket", "connect", "bind", "listen", "accept", "accept4", "getsockname", "getaddrinfo", "freeaddrinfo",
        "setsockopt", "send", "recv", "sendto", "recvfrom", "inet_addr", "inet_pton",
        "kill", "killpg", "signal", "sigaction", "raise", "waitpid", "wait4", "fork", "execve", "posix_spawn",
        "setsid", "setpgid", "prctl", "unshare", "setuid", "setgid", "setgroups",
        "getuid", "geteuid", "getgid", "getegid", "getpid", "getppid", "getpwnam", "getpwnam_r", "getpwuid",
        "getpwuid_r", "getgrnam", "getgrnam_r", "isatty", "strerror", "eventfd", "inotify_init1", "epoll_create1",
        "mount", "umount2", "sysconf", "getrlimit", "setrlimit",
    ]

    /// Known exceptions, as "Sources/<path>: <call>", each with a comment saying why (a file another change is
    /// rewriting: "moved by the pool/runner change"). An entry that no longer matches a call fails the test, so the
    /// list only shrinks. Empty: there is no exception.
    static let allowedRawCalls: Set<String> = []

    struct SourceFile {
        var target: String
        var relative: String  // from the repository root
        var lines: [Substring]
    }

    static func sources() throws -> [SourceFile] {
        let root = "\(repoRoot)/Sources"
        let files = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String }
            .filter { $0.hasSuffix(".swift") } ?? []
        return try files.sorted().map { file in
            let text = try String(contentsOfFile: "\(root)/\(file)", encoding: .utf8)
            return SourceFile(target: String(file.split(separator: "/")[0]), relative: "Sources/\(file)",
                              lines: text.split(separator: "\n", omittingEmptySubsequences: false))
        }
    }

    /// The line's code: string literals blanked (their interpolations kept, they are code), then its `//` comment
    /// dropped. A line inside a multi-line string literal is taken as code.
    static func code(_ line: Substring) -> String {
        var out = ""
        var interpolations: [Int] = []  // open parentheses inside each open `\(`
        var inString = false, escaped = false
        for c in line {
            if inString {
                if escaped {
                    escaped = false
                    if c == "(" {
                        interpolations.append(0)
                        inString = false
                        out.append("(")
                    } else {
                        out.append(" ")
                    }
                } else if c == "\\" {
                    escaped = true
                    out.append(" ")
                } else if c == "\"" {
                    inString = false
                    out.append(c)
                } else {
                    out.append(" ")
                }
                continue
            }
            if c == "\"" {
                inString = true
            } else if let open = interpolations.last {
                if c == "(" {
                    interpolations[interpolations.count - 1] = open + 1
                } else if c == ")" {
                    if open == 0 {
                        interpolations.removeLast()
                        inString = true
                    } else {
                        interpolations[interpolations.count - 1] = open - 1
                    }
                }
            }
            out.append(c)
        }
        if let comment = out.range(of: "//") { out = String(out[..<comment.lowerBound]) }
        return out
    }

    /// The module a line imports (`import Glibc`, `@preconcurrency import Foo`, `import func Glibc.open`), or nil.
    static func importedModule(_ line: String) -> String? {
        let pattern = #"^\s*(@[A-Za-z_]+(\([^)]*\))?\s+)*import\s+((typealias|struct|class|enum|protocol|let|var|func)\s+)?([A-Za-z_][A-Za-z0-9_]*)"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let m = regex.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)),
              let r = Range(m.range(at: 5), in: line) else { return nil }
        return String(line[r])
    }

    /// Unqualified calls of `rawCalls` on `line` (not `x.open(`, not a declaration `func open(`, not a call whose
    /// first argument is labelled, which no C function has), plus any `Glibc.` / `Darwin.` qualified name.
    static func rawCallsOn(_ line: String, declared: Set<String>) -> [String] {
        var found: [String] = []
        let names = rawCalls.joined(separator: "|")
        let pattern = #"(?<![A-Za-z0-9_.])(func\s+)?("# + names + #")\s*\((?!\s*[A-Za-z_][A-Za-z0-9_]*\s*:(?!:))"#
        if let regex = try? NSRegularExpression(pattern: pattern) {
            for m in regex.matches(in: line, range: NSRange(line.startIndex..., in: line)) {
                guard m.range(at: 1).location == NSNotFound, let r = Range(m.range(at: 2), in: line) else { continue }
                let name = String(line[r])
                if !declared.contains(name) { found.append(name) }
            }
        }
        if let regex = try? NSRegularExpression(pattern: #"(?<![A-Za-z0-9_.])(Glibc|Musl|Darwin)\.([A-Za-z_]+)"#) {
            for m in regex.matches(in: line, range: NSRange(line.startIndex..., in: line)) {
                if let r = Range(m.range, in: line) { found.append(String(line[r])) }
            }
        }
        return found
    }

    /// Names a file declares as its own functions (`func open(`): an unqualified call of one is to that function.
    static func declaredFunctions(_ file: SourceFile) -> Set<String> {
        guard let regex = try? NSRegularExpression(pattern: #"\bfunc\s+([A-Za-z_][A-Za-z0-9_]*)\s*[(<]"#) else { return [] }
        var names: Set<String> = []
        for line in file.lines {
            let s = code(line)
            for m in regex.matches(in: s, range: NSRange(s.startIndex..., in: s)) {
                if let r = Range(m.range(at: 1), in: s) { names.insert(String(s[r])) }
            }
        }
        return names
    }

    /// Violations of the rule in `files`, as "path:line: what  the line".
    static func violations(in files: [SourceFile]) -> [String] {
        violationsAndExceptions(in: files).hits
    }

    /// The violations, and the `allowedRawCalls` entries that matched a call.
    static func violationsAndExceptions(in files: [SourceFile]) -> (hits: [String], used: Set<String>) {
        var hits: [String] = []
        var used: Set<String> = []
        for file in files where !cModules.contains(file.target) {
            let declared = declaredFunctions(file)
            let ownsSystemCalls = file.target == "FEMSystem"
            for (n, line) in file.lines.enumerated() {
                let text = code(line)
                let shown = "\(file.relative):\(n + 1): "
                if let module = importedModule(text) {
                    if platformModules.contains(module) && !ownsSystemCalls {
                        hits.append(shown + "imports \(module), which only FEMSystem may  \(text.trimmed)")
                    }
                    if cModules.contains(module) || module.hasPrefix("FEM") || module == "femctl" {
                        let allowed = allowedImports[file.target] ?? []
                        if !allowed.contains(module) {
                            hits.append(shown + "\(file.target) may not import \(module) (docs/architecture.md, Layers)"
                                        + "  \(text.trimmed)")
                        }
                    }
                    continue
                }
                guard !ownsSystemCalls else { continue }
                for call in rawCallsOn(text, declared: declared) {
                    guard !allowedRawCalls.contains("\(file.relative): \(call)") else {
                        used.insert("\(file.relative): \(call)")
                        continue
                    }
                    hits.append(shown + "raw system call \(call)( outside FEMSystem (use Posix or a FEMSystem type)"
                                + "  \(text.trimmed)")
                }
            }
        }
        return (hits, used)
    }

    @Test func rawSystemCallsAndPlatformImportsStayInFEMSystem() throws {
        let files = try Self.sources()
        #expect(files.count > 50, "found the sources under \(Self.repoRoot)/Sources")
        let (hits, used) = Self.violationsAndExceptions(in: files)
        #expect(hits.isEmpty, "the layer rule (docs/architecture.md) is broken:\n\(hits.joined(separator: "\n"))")
        let stale = Self.allowedRawCalls.subtracting(used)
        #expect(stale.isEmpty,
                "LayeringTests.allowedRawCalls entries that match no call any more (remove them): \(stale.sorted())")
    }

    /// Every Swift target folder under Sources/ has a layer in `allowedImports` and is named in docs/architecture.md.
    @Test func everyTargetHasALayer() throws {
        let root = "\(Self.repoRoot)/Sources"
        let doc = try String(contentsOfFile: "\(Self.repoRoot)/docs/architecture.md", encoding: .utf8)
        let folders = try FileManager.default.contentsOfDirectory(atPath: root)
        #expect(folders.count > 8)
        for folder in folders.sorted() {
            let isC = FileManager.default.fileExists(atPath: "\(root)/\(folder)/module.modulemap")
            if isC {
                #expect(Self.cModules.contains(folder), "Sources/\(folder) is a C module LayeringTests does not know")
            } else {
                #expect(Self.allowedImports[folder] != nil,
                        "Sources/\(folder) has no layer: add it to LayeringTests.allowedImports and docs/architecture.md")
            }
            #expect(doc.contains("`\(folder)`"), "docs/architecture.md does not name the target `\(folder)`")
        }
    }

    /// Package.swift's target dependencies obey the same table: a dependency the layer does not allow fails, so the
    /// graph cannot grow an edge the imports check would only catch once someone uses it.
    @Test func packageDependenciesFollowTheLayers() throws {
        let manifest = try String(contentsOfFile: "\(Self.repoRoot)/Package.swift", encoding: .utf8)
        let target = try NSRegularExpression(
            pattern: #"\.(target|executableTarget)\(name:\s*"([^"]+)",\s*dependencies:\s*\[([^\]]*)\]"#)
        let quoted = try NSRegularExpression(pattern: #""([A-Za-z0-9_-]+)""#)
        var checked = 0
        for m in target.matches(in: manifest, range: NSRange(manifest.startIndex..., in: manifest)) {
            guard let n = Range(m.range(at: 2), in: manifest), let d = Range(m.range(at: 3), in: manifest) else { continue }
            let name = String(manifest[n])
            guard let allowed = Self.allowedImports[name] else { continue }  // fem-bench (bench/) is not a layer
            checked += 1
            let deps = String(manifest[d])
            for q in quoted.matches(in: deps, range: NSRange(deps.startIndex..., in: deps)) {
                guard let r = Range(q.range(at: 1), in: deps) else { continue }
                let dep = String(deps[r])
                guard Self.allowedImports[dep] != nil || Self.cModules.contains(dep) else { continue }  // a product
                #expect(allowed.contains(dep), "Package.swift: \(name) depends on \(dep), which its layer may not use")
            }
        }
        #expect(checked >= 8, "found the targets in Package.swift")
    }

    /// The check finds what it is there to find: a planted bad line of each kind is reported with its file and line.
    @Test func theCheckFailsOnPlantedViolations() {
        let planted = SourceFile(target: "FEMStaging", relative: "Sources/FEMStaging/Planted.swift", lines: [
            "import Glibc",
            "import FEMLaunchers",
            "let fd = open(path, O_RDONLY)",
            "guard chmod(dir, 0o700) == 0 else { return }",
            "    _ = Glibc.write(fd, p, n)",
            "let ok = mkdir(p, 0o700) == 0 && getuid() == 0",
            "try Posix.open(path, O_RDONLY)",       // the wrapper: fine
            "func read(_ x: Int) {}; read(3)",      // the file's own function: fine
            "// chmod(dir, 0o700) in a comment: fine",
            "throw Failure(\"cannot read (the file) or stat( it at https://x/y\")",  // words in a string: fine
            "print(\"\\(String(cString: strerror(errno))) and \\(x.count)\")",  // an interpolation is code
            "reader.close(); signal(in: line)",     // a method and a labelled call: fine
        ])
        let hits = Self.violations(in: [planted])
        let expected = ["Planted.swift:1: imports Glibc", "Planted.swift:2: FEMStaging may not import FEMLaunchers",
                        "Planted.swift:3: raw system call open(", "Planted.swift:4: raw system call chmod(",
                        "Planted.swift:5: raw system call Glibc.write", "Planted.swift:6: raw system call mkdir(",
                        "Planted.swift:6: raw system call getuid(", "Planted.swift:11: raw system call strerror("]
        for e in expected {
            #expect(hits.contains { $0.contains(e) }, "not found: \(e)\nhits:\n\(hits.joined(separator: "\n"))")
        }
        #expect(hits.count == expected.count, "unexpected hits:\n\(hits.joined(separator: "\n"))")
        let core = SourceFile(target: "FEMCore", relative: "Sources/FEMCore/X.swift", lines: ["import FEMSystem"])
        #expect(Self.violations(in: [core]).count == 1, "FEMCore importing FEMSystem is reported")
        let exe = SourceFile(target: "fem-client", relative: "Sources/fem-client/X.swift", lines: ["import FEMStaging"])
        #expect(Self.violations(in: [exe]).count == 1, "an executable importing more than FEMNode is reported")
        let system = SourceFile(target: "FEMSystem", relative: "Sources/FEMSystem/X.swift",
                                lines: ["import Glibc", "import CLinux", "let fd = open(p, 0)"])
        #expect(Self.violations(in: [system]).isEmpty, "FEMSystem owns them")
    }
}

extension String {
    fileprivate var trimmed: String { trimmingCharacters(in: .whitespaces) }
}
