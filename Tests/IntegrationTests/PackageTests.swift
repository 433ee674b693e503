import FEMCore
import Foundation
import Testing

/// The Debian package (scripts/package-deb.sh), checked from outside: its file list, control data and maintainer
/// scripts, then a real install into a fresh Debian 12 root made with debootstrap (cached as a tarball under
/// .build-test/cache), where the packaged `fem-client check` runs against the test broker, and remove/purge do what
/// docs/operations.md says.
@Suite(.serialized)
struct PackageTests {
    /// debootstrap's minimal Debian 12 with systemd (as on a machine a node runs on), made once (about 2 min with a
    /// near mirror) and unpacked in seconds after.
    static let rootCache = "\(TestEnv.repoRoot)/.build-test/cache/debian-12-minbase-systemd.tar"
    static let mirror = "http://deb.debian.org/debian"

    @Test func theDebianPackageInstallsIntoAFreshDebian12AndKeepsAnEditedConfig() throws {
        let started = Date()
        let out = try TestEnv.scratch("deb")
        defer { try? FileManager.default.removeItem(atPath: out) }   // ~45 MB of packages

        // 1. The script builds the package (the release build is incremental: test.sh warms it first).
        let built = try Shell.run(["/bin/bash", "\(TestEnv.repoRoot)/scripts/package-deb.sh", "--fast", "--out", out])
        try #require(built.status == 0, "package-deb.sh failed: \(built.output)")
        let arch = try Shell.run(["/usr/bin/dpkg", "--print-architecture"]).output
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let deb = "\(out)/fem-client_\(FEMVersion.string)_\(arch).deb"
        try #require(FileManager.default.fileExists(atPath: deb), "no \(deb); package-deb.sh said: \(built.output)")
        #expect(built.output.hasSuffix("\(deb)\n"), "the script's last line is the package: \(built.output.suffix(300))")
        let packaged = Date()
        // lintian (when installed) finds no errors; its warnings are listed in docs/operations.md.
        #expect(!built.output.contains("\nE: fem-client"), "lintian reports errors: \(built.output)")

        // 2. Its files, owned by root, with the packaged paths.
        let list = try Shell.run(["/usr/bin/dpkg-deb", "-c", deb])
        try #require(list.status == 0, "\(list.output)")
        let entries = list.output.split(separator: "\n").map(String.init)
        func entry(_ path: String) -> String? { entries.first { $0.hasSuffix(" ./\(path)") || $0.contains(" ./\(path) -> ") } }
        for path in ["usr/bin/fem-client", "usr/bin/femctl", "lib/systemd/system/fem-client.service",
                     "etc/fem-client/fem-client.toml", "etc/logrotate.d/fem-client",
                     "usr/share/doc/fem-client/README.md", "usr/share/doc/fem-client/operations.md",
                     "usr/share/doc/fem-client/security.md", "usr/share/doc/fem-client/copyright",
                     "usr/share/doc/fem-client/changelog.gz", "usr/share/doc/fem-client/templates/", "usr/share/doc/fem-client/console/",
                     "usr/share/bash-completion/completions/fem-client", "usr/share/bash-completion/completions/femctl",
                     "usr/share/zsh/vendor-completions/_fem-client", "usr/share/fish/vendor_completions.d/femctl.fish",
                     "usr/share/man/man1/fem-client.1.gz", "usr/share/man/man1/femctl.1.gz"] {
            #expect(entry(path) != nil, "dpkg-deb -c lists no ./\(path):\n\(list.output)")
        }
        for path in ["usr/bin/fem-client", "usr/bin/femctl"] {
            #expect(entry(path)?.hasPrefix("-rwxr-xr-x root/root ") == true, "\(entry(path) ?? path)")
        }
        #expect(entries.allSatisfy { $0.contains(" root/root ") }, "every file is root's:\n\(list.output)")
        // Nothing of the build or the checkout's dev state (no .build*, no var/, no Swift runtime libraries).
        #expect(!list.output.contains(".build") && !list.output.contains("libswift") && !list.output.contains("dev-broker"),
                "\(list.output)")

        let control = try Shell.run(["/usr/bin/dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"])
        #expect(control.output.contains("Version: \(FEMVersion.string)\n"), "\(control.output)")
        #expect(control.output.contains("Architecture: \(arch)\n"), "\(control.output)")
        for library in ["librabbitmq4", "libcurl4", "libgit2-1.5", "libsqlite3-0", "libssl3", "libc6"] {
            #expect(control.output.contains(library), "Depends names no \(library): \(control.output)")
        }
        #expect(!control.output.lowercased().contains("swift"), "the Swift runtime is linked in: \(control.output)")
        let meta = "\(out)/DEBIAN"
        let extracted = try Shell.run(["/usr/bin/dpkg-deb", "-e", deb, meta])
        try #require(extracted.status == 0, "\(extracted.output)")
        let conffiles = try String(contentsOfFile: "\(meta)/conffiles", encoding: .utf8)
        #expect(conffiles.split(separator: "\n").contains("/etc/fem-client/fem-client.toml"), "\(conffiles)")
        let postinst = try String(contentsOfFile: "\(meta)/postinst", encoding: .utf8)
        // Its commands (not the lines it echoes to the admin) neither enable nor start the service, nor touch the config.
        let commands = postinst.split(separator: "\n").filter { !$0.contains("echo ") && !$0.hasPrefix("#") }
            .joined(separator: "\n")
        for word in ["systemctl enable", "systemctl start", "systemctl restart", "fem-client.toml"] {
            #expect(!commands.contains(word), "the postinst runs \(word): \(postinst)")
        }

        // 3. A fresh Debian 12 root.
        let root = try Self.freshRoot()
        defer { Self.removeRoot(root) }
        let unpacked = Date()
        try FileManager.default.copyItem(atPath: deb, toPath: "\(root)/tmp/fem-client.deb")
        try? FileManager.default.removeItem(atPath: "\(root)/etc/resolv.conf")
        try FileManager.default.copyItem(atPath: "/etc/resolv.conf", toPath: "\(root)/etc/resolv.conf")
        // debootstrap writes no /etc/hosts (an installer does): without it "localhost" is looked up in DNS.
        try "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            .write(toFile: "\(root)/etc/hosts", atomically: true, encoding: .utf8)

        // 4. apt installs it with its dependencies from the root's own sources.
        let update = try Self.inRoot(root, "apt-get update -qq")
        try #require(update.status == 0, "apt-get update in the fresh root failed (is \(Self.mirror) reachable?): \(update.output)")
        let install = try Self.inRoot(root, "apt-get install -y -q --no-install-recommends /tmp/fem-client.deb")
        try #require(install.status == 0, "apt-get install ./fem-client.deb failed: \(install.output)")
        #expect(install.output.contains("fem-client is installed but NOT started"), "\(install.output)")
        #expect(install.output.contains("created the system user fem-task"), "\(install.output)")
        let installed = Date()

        let files = try Self.inRoot(root, "dpkg -L fem-client")
        for path in ["/usr/bin/fem-client", "/usr/bin/femctl", "/lib/systemd/system/fem-client.service",
                     "/etc/fem-client/fem-client.toml", "/etc/logrotate.d/fem-client"] {
            #expect(files.output.split(separator: "\n").contains(Substring(path)), "dpkg -L: no \(path): \(files.output)")
        }
        let state = try Self.inRoot(root, "id -u fem-task && getent passwd fem-task | cut -d: -f7 && "
                                    + "stat -c '%a %U' /var/lib/fem-client /var/log/fem-client /etc/fem-client/broker")
        #expect(state.status == 0, "\(state.output)")
        #expect(state.output.contains("/usr/sbin/nologin\n711 root\n750 root\n700 root\n"), "\(state.output)")
        let unit = try String(contentsOfFile: "\(root)/lib/systemd/system/fem-client.service", encoding: .utf8)
        #expect(unit.contains("\nExecStart=/usr/bin/fem-client daemon --config /etc/fem-client/fem-client.toml\n"))
        #expect(!FileManager.default.fileExists(atPath: "\(root)/etc/systemd/system/multi-user.target.wants/fem-client.service"),
                "installing enables nothing")
        // The root's own systemd accepts the installed unit, with the programs it names (fem-client, /bin/kill).
        let verify = try Self.inRoot(root, "systemd-analyze verify /lib/systemd/system/fem-client.service")
        #expect(verify.status == 0, "systemd-analyze verify in the root: \(verify.output)")
        #expect(!verify.output.contains("fem-client.service"), "systemd-analyze verify in the root: \(verify.output)")

        // 5. The packaged binary runs: a fresh install's check names the files still missing.
        let fresh = try Self.inRoot(root, "fem-client check --config /etc/fem-client/fem-client.toml")
        #expect(fresh.status == 1, "\(fresh.output)")
        #expect(fresh.output.contains("broker.ca_file: cannot read /etc/fem-client/broker/ca.pem"), "\(fresh.output)")

        // 6. The admin's edits: this node's broker account and files, no launcher. check then passes against the
        // real broker over TLS, with the root's own libssl, librabbitmq and libcurl.
        let brokerDir = try TestEnv.brokerDir(), port = try TestEnv.brokerPort()
        let node = "pkg-\(UUID().uuidString.prefix(6).lowercased())"
        try BrokerAccounts.addNode(node, brokerDir: brokerDir, port: port)
        for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "node.pem"), ("node.key", "node.key"),
                           ("nodes/\(node).password", "node.password")] {
            try FileManager.default.copyItem(atPath: "\(brokerDir)/\(from)", toPath: "\(root)/etc/fem-client/broker/\(to)")
        }
        let configPath = "\(root)/etc/fem-client/fem-client.toml"
        let original = try String(contentsOfFile: configPath, encoding: .utf8)
        #expect(original.contains("\nwork_dir = \"/var/lib/fem-client\"\n"), "\(original.prefix(2000))")
        #expect(original.contains("\nlog_file = \"/var/log/fem-client/receiver.log\"\n"))
        let edited = original
            .replacingOccurrences(of: "\nid = \"dev-node\"\n", with: "\nid = \"\(node)\"\n")
            .replacingOccurrences(of: "\nurl = \"amqps://dev-node@broker.example.org:5671/%2f\"\n",
                                  with: "\nurl = \"amqps://\(node)@localhost:\(port)/%2f\"\n")
            .replacingOccurrences(of: "\nenabled = [\"docker\"]\n", with: "\nenabled = []\n")
        #expect(edited.contains(node) && edited.contains("\nenabled = []\n"), "the example's lines changed: \(edited.prefix(3000))")
        try edited.write(toFile: configPath, atomically: true, encoding: .utf8)
        let check = try Self.inRoot(root, "fem-client check --config /etc/fem-client/fem-client.toml")
        #expect(check.status == 0, "fem-client check from the package: \(check.output)")
        for line in ["ok    configuration /etc/fem-client/fem-client.toml (node \(node))",
                     "ok    work dir /var/lib/fem-client is writable",
                     "reachable over TLS with client certificate /etc/fem-client/broker/node.pem",
                     "ok    broker exchanges fem.tasks, fem.control and fem.events exist"] {
            #expect(check.output.contains(line), "check says no \"\(line)\": \(check.output)")
        }

        // The packaged daemon starts as the unit starts it (in /var/lib/fem-client), connects, logs to
        // /var/log/fem-client/receiver.log and stops on SIGTERM (it drains; nothing runs).
        let daemon = try Self.inRoot(root, """
            cd /var/lib/fem-client
            /usr/bin/fem-client daemon --config /etc/fem-client/fem-client.toml > /tmp/daemon.out 2>&1 &
            pid=$!; i=0
            until grep -q "connected to the broker" /var/log/fem-client/receiver.log 2>/dev/null; do
              kill -0 $pid 2>/dev/null || { echo "the daemon exited:"; cat /tmp/daemon.out; exit 1; }
              i=$((i + 1)); [ $i -le 300 ] || { echo "not connected within 30 s:"; cat /tmp/daemon.out; kill -KILL $pid; exit 1; }
              sleep 0.1
            done
            kill -TERM $pid; wait $pid; echo "daemon exit $?"
            """)
        #expect(daemon.status == 0 && daemon.output.contains("daemon exit 0"), "the packaged daemon: \(daemon.output)")
        let receiverLog = (try? String(contentsOfFile: "\(root)/var/log/fem-client/receiver.log", encoding: .utf8)) ?? ""
        #expect(receiverLog.contains("connected to the broker"), "\(receiverLog)")

        // 7. remove keeps the edited config (and the work dir); a reinstall does not overwrite it.
        let remove = try Self.inRoot(root, "apt-get remove -y -q fem-client")
        #expect(remove.status == 0, "\(remove.output)")
        #expect(!FileManager.default.fileExists(atPath: "\(root)/usr/bin/fem-client"))
        #expect((try? String(contentsOfFile: configPath, encoding: .utf8)) == edited, "remove kept the edited config")
        #expect(FileManager.default.fileExists(atPath: "\(root)/var/lib/fem-client"), "remove keeps the work dir")
        let again = try Self.inRoot(root, "apt-get install -y -q --no-install-recommends /tmp/fem-client.deb")
        #expect(again.status == 0, "\(again.output)")
        #expect((try? String(contentsOfFile: configPath, encoding: .utf8)) == edited, "a reinstall kept the edited config")
        #expect(!again.output.contains("NOT started"), "a reinstall over kept config files is an upgrade: \(again.output)")
        let checkAgain = try Self.inRoot(root, "fem-client check --config /etc/fem-client/fem-client.toml")
        #expect(checkAgain.status == 0, "\(checkAgain.output)")

        // An upgrade whose packaged config changed too: dpkg keeps the admin's (apt's usual unattended choice,
        // --force-confold) and puts the new one beside it as fem-client.toml.dpkg-dist.
        let next = "\(out)/next"
        let unpackedDeb = try Shell.run(["/usr/bin/dpkg-deb", "-R", deb, next])
        try #require(unpackedDeb.status == 0, "\(unpackedDeb.output)")
        let nextControl = try String(contentsOfFile: "\(next)/DEBIAN/control", encoding: .utf8)
        try nextControl.replacingOccurrences(of: "\nVersion: \(FEMVersion.string)\n", with: "\nVersion: \(FEMVersion.string).1\n")
            .write(toFile: "\(next)/DEBIAN/control", atomically: true, encoding: .utf8)
        try (original + "# a line the next version adds\n")
            .write(toFile: "\(next)/etc/fem-client/fem-client.toml", atomically: true, encoding: .utf8)
        let nextDeb = "\(root)/tmp/fem-client-next.deb"
        let repacked = try Shell.run(["/usr/bin/dpkg-deb", "--build", "--root-owner-group", "-Zxz", "-z0", next, nextDeb])
        try #require(repacked.status == 0, "\(repacked.output)")
        let upgrade = try Self.inRoot(root, "apt-get install -y -q -o Dpkg::Options::=--force-confdef "
                                      + "-o Dpkg::Options::=--force-confold /tmp/fem-client-next.deb")
        #expect(upgrade.status == 0, "\(upgrade.output)")
        #expect((try? String(contentsOfFile: configPath, encoding: .utf8)) == edited, "an upgrade kept the edited config")
        #expect((try? String(contentsOfFile: "\(configPath).dpkg-dist", encoding: .utf8))?
                    .hasSuffix("# a line the next version adds\n") == true, "the new config is beside it: \(upgrade.output)")
        let upgraded = try Self.inRoot(root, "dpkg-query -W -f='${Version}' fem-client")
        #expect(upgraded.output == "\(FEMVersion.string).1", "\(upgraded.output)")

        // 8. purge removes the config, the work dir and the logs; the admin's broker files stay.
        let purge = try Self.inRoot(root, "apt-get purge -y -q fem-client")
        #expect(purge.status == 0, "\(purge.output)")
        for gone in ["/etc/fem-client/fem-client.toml", "/etc/logrotate.d/fem-client", "/var/lib/fem-client",
                     "/var/log/fem-client", "/usr/bin/fem-client", "/lib/systemd/system/fem-client.service"] {
            #expect(!FileManager.default.fileExists(atPath: "\(root)\(gone)"), "purge left \(gone)")
        }
        #expect(FileManager.default.fileExists(atPath: "\(root)/etc/fem-client/broker/node.key"),
                "purge keeps the credentials the admin put there")
        let status = try Self.inRoot(root, "dpkg-query -W -f='${Status}' fem-client 2>&1 || true")
        #expect(!status.output.contains("install ok") && !status.output.contains("config-files"), "\(status.output)")

        let done = Date()
        print("PackageTests: package-deb.sh \(Int(packaged.timeIntervalSince(started))) s, fresh root "
              + "\(Int(unpacked.timeIntervalSince(packaged))) s, apt install \(Int(installed.timeIntervalSince(unpacked))) s, "
              + "checks/remove/purge \(Int(done.timeIntervalSince(installed))) s")
    }

    // MARK: the fresh root

    /// A fresh minimal Debian 12 root: the cached debootstrap tarball unpacked, or debootstrap run once to make it.
    static func freshRoot() throws -> String {
        let dir = try TestEnv.scratch("debroot")
        let root = "\(dir)/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: rootCache) {
            guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/debootstrap") else {
                throw HarnessError("debootstrap is missing: apt-get install debootstrap (test.sh installs it)")
            }
            let started = Date()
            let made = try Shell.run(["/usr/sbin/debootstrap", "--variant=minbase", "--include=systemd", "bookworm",
                                      root, mirror])
            guard made.status == 0 else {
                throw HarnessError("debootstrap --variant=minbase --include=systemd bookworm failed: is the Debian mirror \(mirror) "
                                   + "reachable from here? \(made.output.suffix(3000))")
            }
            try FileManager.default.createDirectory(atPath: "\(TestEnv.repoRoot)/.build-test/cache",
                                                    withIntermediateDirectories: true)
            let tar = try Shell.run(["/bin/tar", "--numeric-owner", "-C", root, "-cf", "\(rootCache).part", "."])
            guard tar.status == 0 else { throw HarnessError("tar of the fresh root failed: \(tar.output)") }
            try FileManager.default.moveItem(atPath: "\(rootCache).part", toPath: rootCache)
            print("PackageTests: debootstrap took \(Int(Date().timeIntervalSince(started))) s; cached as \(rootCache)")
        } else {
            let tar = try Shell.run(["/bin/tar", "--numeric-owner", "-C", root, "-xf", rootCache])
            guard tar.status == 0 else {
                throw HarnessError("unpacking \(rootCache) failed (delete it to make it again): \(tar.output)")
            }
        }
        return root
    }

    /// Runs a shell command in the root: chroot in a mount and PID namespace of its own, with the root's /proc
    /// mounted there only (it goes with the namespace, whatever happens; nothing is ever mounted on the host).
    static func inRoot(_ root: String, _ command: String) throws -> (status: Int32, output: String) {
        try Shell.run(["/usr/bin/unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                       "--mount-proc=\(root)/proc", "/usr/sbin/chroot", root, "/bin/sh", "-c", command],
                      environment: ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                    "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8", "HOME": "/root"])
    }

    /// Deletes the root unless something is still mounted below it (then it is left, and the test says so).
    static func removeRoot(_ root: String) {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        if mounts.contains(" \(root)/") || mounts.contains(" \(root) ") {
            Issue.record("something is still mounted under \(root): left in place\n\(mounts)")
            return
        }
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: root).deletingLastPathComponent().path)
    }
}
