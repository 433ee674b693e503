#!/usr/bin/env bash
# Installs the shell completions (bash, zsh, fish) and the manual pages of fem-client and femctl, made from the
# binaries themselves (swift-argument-parser's --generate-completion-script; scripts/manpage.py for the pages).
#   scripts/install-shell-docs.sh --bin DIR [--prefix PREFIX] [--destdir DESTDIR]
# PREFIX: /usr/local by default (root), else ~/.local. Files go to DESTDIR/PREFIX/share/{bash-completion/completions,
# zsh/site-functions, fish/vendor_completions.d, man/man1} (DESTDIR for packaging, e.g. a .deb's root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="" prefix="" destdir=""
while (( $# )); do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    *) echo "install-shell-docs.sh: unknown argument $1 (--bin DIR, --prefix PREFIX, --destdir DIR)" >&2; exit 64 ;;
  esac
done
[[ -n $bin ]] || { echo "install-shell-docs.sh: --bin DIR (the folder with fem-client and femctl) is required" >&2; exit 64; }
if [[ -z $prefix ]]; then
  if [[ $(id -u) == 0 ]]; then prefix=/usr/local; else prefix=$HOME/.local; fi
fi
command -v python3 >/dev/null || { echo "install-shell-docs.sh: python3 is missing (apt-get install python3)" >&2; exit 1; }
share=$destdir$prefix/share
mkdir -p "$share/bash-completion/completions" "$share/zsh/site-functions" "$share/fish/vendor_completions.d" \
         "$share/man/man1"
for tool in fem-client femctl; do
  exe=$bin/$tool
  [[ -x $exe ]] || { echo "install-shell-docs.sh: $exe is not an executable (build first)" >&2; exit 1; }
  "$exe" --generate-completion-script bash > "$share/bash-completion/completions/$tool"
  "$exe" --generate-completion-script zsh > "$share/zsh/site-functions/_$tool"
  "$exe" --generate-completion-script fish > "$share/fish/vendor_completions.d/$tool.fish"
  python3 "$here/manpage.py" "$exe" > "$share/man/man1/$tool.1"
done
echo "install-shell-docs.sh: completions (bash, zsh, fish) and man pages fem-client(1), femctl(1) under $share"
