#!/usr/bin/env bash
# Builds the Debian package fem-client_<version>_<arch>.deb: release binaries (Swift's runtime linked in statically,
# so the package needs only Debian's libraries), the systemd unit, /etc/fem-client/fem-client.toml (a conffile: dpkg
# never overwrites an edited one), the logrotate snippet, docs, shell completions and manual pages.
#   scripts/package-deb.sh [--out DIR]    # DIR defaults to the checkout; prints the .deb's path last
#   scripts/package-deb.sh --fast ...     # xz -0 instead of xz -6: about 5 s instead of 1-2.5 min, ~43 MB instead of
#                                         # ~35 (the tests use it; zstd would be faster still, but lintian refuses it)
#   scripts/package-deb.sh --build-only   # only the release build (test.sh warms it before the tests)
# The release build lives in .build-release (its own folder: it never fights the debug build in .build).
# docs/operations.md "Installing from the Debian package" says how to install, enable, upgrade and remove it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root build_only=false compress=xz
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --build-only) build_only=true; shift ;;
    --fast) compress="xz -z0"; shift ;;
    *) echo "package-deb.sh: unknown argument $1 (--out DIR, --fast, --build-only)" >&2; exit 64 ;;
  esac
done
for tool in dpkg-deb dpkg-shlibdeps swift strip gzip; do
  command -v "$tool" >/dev/null || { echo "package-deb.sh: $tool is missing (apt-get install dpkg-dev binutils; Swift 6 for swift)" >&2; exit 1; }
done

# 1. Release binaries. -static-stdlib links the Swift runtime and Foundation into each binary: the Swift runtime is
# no Debian package, so the binaries may need nothing but Debian's shared libraries.
scratch=$root/.build-release
build=(swift build -c release --scratch-path "$scratch" -Xswiftc -static-stdlib)
for product in fem-client femctl; do
  echo "package-deb.sh: building $product (release, static Swift runtime)" >&2
  (cd "$root" && "${build[@]}" --product "$product" >&2)
done
bin=$(cd "$root" && "${build[@]}" --show-bin-path)
$build_only && exit 0
for b in fem-client femctl; do
  if ldd "$bin/$b" | grep -q 'libswift\|libFoundation\|lib_Foundation\|libdispatch\|libBlocksRuntime'; then
    echo "package-deb.sh: $bin/$b still links the Swift runtime dynamically:" >&2
    ldd "$bin/$b" >&2; exit 1
  fi
done

version=$(sed -n 's/.*static let string = "\([^"]*\)".*/\1/p' "$root/Sources/FEMCore/Model/Version.swift")
[[ $version =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || { echo "package-deb.sh: no version in Sources/FEMCore/Model/Version.swift" >&2; exit 1; }
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-fem-client maintainers <fem-client@example.org>}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d "${TMPDIR:-/tmp}/fem-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/fem-client_${version}_$arch
doc=$stage/usr/share/doc/fem-client
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/fem-client" "$stage/etc/logrotate.d" \
         "$doc"

# 2. Binaries (symbols stripped: backtraces keep the Swift symbol names only in .build-release's copies).
for b in fem-client femctl; do
  install -m 0755 "$bin/$b" "$stage/usr/bin/$b"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/$b"
done

# 3. The unit with the packaged paths. config/fem-client.service already names /etc/fem-client, /var/lib/fem-client
# and /var/log/fem-client; only the binary moves from /usr/local/bin to /usr/bin.
sed -e 's|/usr/local/bin/fem-client|/usr/bin/fem-client|g' -e 's|binary in /usr/local/bin|binary in /usr/bin|' \
    "$root/config/fem-client.service" > "$stage/lib/systemd/system/fem-client.service"
chmod 0644 "$stage/lib/systemd/system/fem-client.service"
grep -q '^ExecStart=/usr/bin/fem-client daemon --config /etc/fem-client/fem-client.toml$' \
  "$stage/lib/systemd/system/fem-client.service" \
  || { echo "package-deb.sh: config/fem-client.service has no ExecStart=/usr/local/bin/fem-client daemon --config /etc/fem-client/fem-client.toml" >&2; exit 1; }

# 4. The example config with the packaged paths: work dir, log, and the broker's files under /etc/fem-client/broker.
config=$stage/etc/fem-client/fem-client.toml
sed -e 's|^# install.sh copies this file to config/fem-client.toml if that file does not exist yet.$|# Installed by the fem-client Debian package. dpkg never overwrites this file once you edit it (an upgrade asks,\n# or leaves the new version beside it as fem-client.toml.dpkg-dist). Check it with: fem-client check|' \
    -e 's|^# Relative paths are taken from the directory the daemon starts in (start.sh starts it in the checkout).$|# Relative paths are taken from the directory the daemon starts in (the systemd unit starts it in /var/lib/fem-client).|' \
    -e 's|^work_dir = "var"$|work_dir = "/var/lib/fem-client"|' \
    -e 's|^log_file = "receiver.log"$|log_file = "/var/log/fem-client/receiver.log"|' \
    -e 's|^# The default is the local development broker that start.sh sets up in var/dev-broker. The user is the node.s own$|# Set the broker'"'"'s host and this node'"'"'s account, and put the files below in /etc/fem-client/broker (0600). The user is the node'"'"'s own|' \
    -e 's|^url = "amqps://dev-node@localhost:5671/%2f"$|url = "amqps://dev-node@broker.example.org:5671/%2f"|' \
    -e 's|^password_file = "var/dev-broker/nodes/dev-node.password"$|password_file = "/etc/fem-client/broker/node.password"|' \
    -e 's|^ca_file = "var/dev-broker/ca.pem"$|ca_file = "/etc/fem-client/broker/ca.pem"|' \
    -e 's|^cert_file = "var/dev-broker/node.pem"$|cert_file = "/etc/fem-client/broker/node.pem"|' \
    -e 's|^key_file = "var/dev-broker/node.key"$|key_file = "/etc/fem-client/broker/node.key"|' \
    "$root/config/fem-client.example.toml" > "$config"
for line in 'work_dir = "/var/lib/fem-client"' 'log_file = "/var/log/fem-client/receiver.log"' \
            'url = "amqps://dev-node@broker.example.org:5671/%2f"' 'password_file = "/etc/fem-client/broker/node.password"' \
            'ca_file = "/etc/fem-client/broker/ca.pem"' 'cert_file = "/etc/fem-client/broker/node.pem"' \
            'key_file = "/etc/fem-client/broker/node.key"' '# Installed by the fem-client Debian package.*'; do
  grep -qx "$line" "$config" || { echo "package-deb.sh: config/fem-client.example.toml changed shape: no line $line after adapting it" >&2; exit 1; }
done
chmod 0644 "$config"
install -m 0644 "$root/config/fem-client.logrotate" "$stage/etc/logrotate.d/fem-client"

# 5. Docs: README and docs/*.md side by side (the unit's Documentation= names operations.md there), the templates,
#    and the console's screenshots (docs/console.md links docs/console/*.png).
install -m 0644 "$root/README.md" "$doc/README.md"
for f in "$root"/docs/*.md; do install -m 0644 "$f" "$doc/$(basename "$f")"; done
cp -r "$root/docs/templates" "$doc/templates"
cp -r "$root/docs/console" "$doc/console"
find "$doc/templates" "$doc/console" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fem-client
Comment: Built by scripts/package-deb.sh from the fem-client source tree (commit $commit).
 The Swift runtime and Foundation (Apache-2.0 with Runtime Library Exception) and the Swift packages of
 Package.swift (swift-argument-parser, swift-log, swift-service-lifecycle, swift-metrics, swift-prometheus,
 hummingbird and SwiftNIO: Apache-2.0; GRDB.swift, TOMLKit: MIT) are linked into the binaries.

Files: *
Copyright: 2025-2026 the fem-client authors
License: unknown
 The source tree states no license: ask its maintainers before redistributing this package.
EOF
{
  echo "fem-client ($version) unstable; urgency=medium"
  echo
  echo "  * Built by scripts/package-deb.sh from commit $commit."
  echo
  echo " -- $maintainer  $(date -R)"
} | gzip -9n > "$doc/changelog.gz"   # a native package (no Debian revision): changelog.gz, not changelog.Debian.gz

# 6. Shell completions and manual pages, from the binaries themselves: scripts/install-shell-docs.sh (install.sh's
# way: swift-argument-parser's --generate-completion-script, scripts/manpage.py), into the stage with Debian's paths:
# zsh's vendor-completions, gzipped pages, and no #! line in the bash completions (bash-completion sources them).
bash "$root/scripts/install-shell-docs.sh" --bin "$bin" --prefix /usr --destdir "$stage" >&2
mkdir -p "$stage/usr/share/zsh/vendor-completions"
mv "$stage"/usr/share/zsh/site-functions/* "$stage/usr/share/zsh/vendor-completions/"
rmdir "$stage/usr/share/zsh/site-functions"
sed -i '1{/^#!/d}' "$stage"/usr/share/bash-completion/completions/*
gzip -9n "$stage"/usr/share/man/man1/*.1
chmod 0644 "$stage"/usr/share/bash-completion/completions/* "$stage"/usr/share/zsh/vendor-completions/* \
           "$stage"/usr/share/fish/vendor_completions.d/* "$stage"/usr/share/man/man1/*
for f in fem-client.1.gz femctl.1.gz; do
  [[ -s $stage/usr/share/man/man1/$f ]] || { echo "package-deb.sh: scripts/install-shell-docs.sh made no $f" >&2; exit 1; }
done

# 8. DEBIAN/control: Depends from the binaries' shared libraries (dpkg-shlibdeps reads the installed packages' shlibs).
mkdir -p "$work/shlibs/debian"
printf 'Source: fem-client\n\nPackage: fem-client\nArchitecture: any\n' > "$work/shlibs/debian/control"
depends=$(cd "$work/shlibs" && dpkg-shlibdeps -O -e"$stage/usr/bin/fem-client" -e"$stage/usr/bin/femctl" 2>/dev/null \
          | sed -n 's/^shlibs:Depends=//p')
if [[ -z $depends ]]; then
  echo "package-deb.sh: dpkg-shlibdeps found nothing; using the known list" >&2
  depends="libc6 (>= 2.34), libcurl4 (>= 7.81), libgit2-1.5, librabbitmq4 (>= 0.11), libsqlite3-0 (>= 3.40), libssl3 (>= 3.0), libstdc++6, libgcc-s1, zlib1g"
fi
# passwd: useradd for the task user in postinst; procps: /bin/kill, the unit's ExecReload (a minimal Debian lacks it).
depends="$depends, passwd, procps"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
# (Unquoted here-documents below: no backquotes or $( ) in their text, which the shell would run.)
cat > "$stage/DEBIAN/control" <<EOF
Package: fem-client
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Recommends: logrotate
Suggests: docker.io, python3-venv
Section: net
Priority: optional
Homepage: https://example.org/fem-client
Description: federated execution node daemon
 fem-client runs the tasks a Federated Execution Manager sends over RabbitMQ
 (AMQPS with client certificates): it stages tools and data in, runs them with
 docker, as confined host processes, as Flower clients or as Slurm jobs, and
 stages outputs out, journaling every step. femctl is the operator's tool.
 .
 The service is installed but not enabled: edit /etc/fem-client/fem-client.toml,
 run "fem-client check", then "systemctl enable --now fem-client".
EOF
printf '/etc/fem-client/fem-client.toml\n/etc/logrotate.d/fem-client\n' > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# fem-client's postinst: the task user, the work and log folders, systemd's view of the unit. It never touches
# /etc/fem-client/fem-client.toml (a conffile: dpkg keeps an edited one) and never starts or enables the service.
set -e
if [ "$1" = configure ]; then
    # Host tasks (launchers process and flower) run as this unprivileged system user (launchers.*.user); the daemon
    # itself runs as root (it starts tasks as that user and manages their cgroups). scripts/create-task-user.sh.
    if ! id -u fem-task >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fem-task
        echo "fem-client: created the system user fem-task for host tasks"
    fi
    # node.work_dir (journal, sandboxes: 0711 so the task user can reach its own sandbox) and node.log_file's folder.
    install -d -m 0711 -o root -g root /var/lib/fem-client
    install -d -m 0750 -o root -g root /var/log/fem-client
    install -d -m 0700 -o root -g root /etc/fem-client/broker
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade restarts a running daemon (it drains first); one that is stopped stays stopped.
        if [ -n "$2" ]; then
            systemctl try-restart fem-client.service || true
        fi
    fi
    if [ -z "$2" ]; then
        echo "fem-client is installed but NOT started, and not enabled at boot. Next:"
        echo "  1. put the broker's CA, this node's certificate, key and password in /etc/fem-client/broker/"
        echo "  2. edit /etc/fem-client/fem-client.toml (node.id, broker.url, launchers)"
        echo "  3. fem-client check --config /etc/fem-client/fem-client.toml"
        echo "  4. systemctl enable --now fem-client"
        echo "  (/usr/share/doc/fem-client/operations.md)"
    fi
fi
exit 0
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# fem-client's prerm: stop the daemon before its files go (it drains: running tasks get node.drain_seconds).
# An upgrade does not stop it here: postinst restarts it once the new files are in place.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop fem-client.service || true
fi
exit 0
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# fem-client's postrm. remove: the config, the journal, the logs and the task user stay. purge: dpkg removes the
# conffiles; this removes the work dir (journal, sandboxes, staged outputs), the logs and the boot-time enablement.
# Files the admin added under /etc/fem-client (broker credentials) and the user fem-task are kept.
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/fem-client /var/log/fem-client
    rm -f /etc/systemd/system/multi-user.target.wants/fem-client.service
    rmdir /etc/fem-client/broker 2>/dev/null || true
    rmdir /etc/fem-client 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

# 9. The package. md5sums for debsums and dpkg --verify.
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"
mkdir -p "$out"
deb=$(cd "$out" && pwd)/fem-client_${version}_$arch.deb
dpkg-deb --build --root-owner-group -Z$compress "$stage" "$deb" >&2
if command -v lintian >/dev/null; then
  echo "package-deb.sh: lintian says:" >&2
  lintian --tag-display-limit 0 "$deb" >&2 || true
fi
ls -l "$bin/fem-client" "$bin/femctl" "$stage/usr/bin/fem-client" "$stage/usr/bin/femctl" >&2
echo "$deb"
