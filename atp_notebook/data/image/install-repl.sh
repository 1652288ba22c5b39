#!/bin/sh
# Build the Lean REPL (leanprover-community/repl) with the image's toolchain.
#
#   usage: install-repl.sh DEST TOOLCHAIN REV [URL]
#
# Clones the repl's tag (or branch) REV from URL (default: $REPL_URL, else
# https://github.com/leanprover-community/repl) into DEST, which must not
# exist yet, and builds it with `lake build`; the binary ends up at
# DEST/.lake/build/bin/repl. Needs git and elan's `lake` on PATH, and network
# access for the clone. Shared by the image's Dockerfile and by
# binder/postBuild.
#
# The REPL loads the .olean files of the project it runs in (`lake env repl`
# puts Mathlib's on LEAN_PATH), and Lean reads only .olean files written by
# its own version. So the REPL must be built with exactly TOOLCHAIN, the one
# Mathlib was built with: the script refuses a REV whose lean-toolchain says
# otherwise, before elan would fetch that other toolchain. The repl's tags are
# named after Lean versions (tag v4.26.0 for leanprover/lean4:v4.26.0).
set -eu

die() {
    printf 'install-repl.sh: %s\n' "$*" >&2
    exit 1
}

usage='usage: install-repl.sh DEST TOOLCHAIN REV [URL]'
dest=${1:?$usage}
toolchain=${2:?$usage}
rev=${3:?$usage}
url=${4:-${REPL_URL:-https://github.com/leanprover-community/repl}}
command -v git >/dev/null || die "git is not on PATH"
command -v lake >/dev/null || die "lake is not on PATH (install elan first)"
[ ! -e "$dest" ] || die "$dest already exists: remove it, or pass another DEST"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'install-repl.sh: cloning the repl at %s from %s\n' "$rev" "$url"
git -c advice.detachedHead=false clone --quiet --depth 1 --branch "$rev" -- "$url" "$work/repl" ||
    die "could not clone $url at $rev"

[ -f "$work/repl/lean-toolchain" ] || die "the repl at $rev has no lean-toolchain file"
wanted=$(tr -d '[:space:]' <"$work/repl/lean-toolchain")
[ "$wanted" = "$toolchain" ] ||
    die "the repl at $rev is built with '$wanted', but the toolchain here is '$toolchain'." \
        "A REPL of another Lean version cannot read this toolchain's .olean files (Mathlib's)." \
        "Pass the repl tag named after the toolchain's version (${toolchain##*:}), or a matching toolchain."

mkdir -p "$(dirname -- "$dest")"
mv "$work/repl" "$dest"
dest=$(cd "$dest" && pwd)
printf 'install-repl.sh: building the repl %s with %s in %s\n' "$rev" "$toolchain" "$dest"
(cd "$dest" && lake build) || die "lake build failed in $dest"
bin=$dest/.lake/build/bin/repl
[ -x "$bin" ] || die "lake build left no executable $bin"
printf 'install-repl.sh: ready: %s\n' "$bin"
