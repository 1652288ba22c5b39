#!/bin/sh
# Build the warm Mathlib project that atp_notebook sandboxes reuse.
#
#   usage: warm-mathlib.sh DIR TOOLCHAIN MATHLIB_REV
#
# Needs elan's `lake` on PATH and network access (GitHub and Mathlib's cache
# server). Shared by the image's Dockerfile and by binder/postBuild. Leaves
# in DIR:
#
#   lean-toolchain, lakefile.toml, lake-manifest.json
#       the scaffold: a workdir holding copies of these three files resolves
#       Mathlib from the manifest, offline, without a warning;
#   .lake/packages/<pkg>
#       Mathlib and its dependencies at the manifest's revisions, with
#       Mathlib's pre-built oleans (`lake exe cache get`) and each package's
#       configuration already elaborated, so `lake env` only reads here.
#
# A workdir reuses the cache by linking its own `.lake` to DIR/.lake, which
# is what atp_notebook's wrap_command does before every command
# (`ln -sfn DIR/.lake .lake`): `lake env lean X.lean` then finds every
# package under .lake/packages and puts their oleans on LEAN_PATH.
set -eu

die() {
    printf 'warm-mathlib.sh: %s\n' "$*" >&2
    exit 1
}

dir=${1:?usage: warm-mathlib.sh DIR TOOLCHAIN MATHLIB_REV}
toolchain=${2:?usage: warm-mathlib.sh DIR TOOLCHAIN MATHLIB_REV}
rev=${3:?usage: warm-mathlib.sh DIR TOOLCHAIN MATHLIB_REV}
command -v lake >/dev/null || die "lake is not on PATH (install elan first)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The scaffold. A workdir's lakefile must require Mathlib exactly like this
# (same name, git URL and rev), or Lake warns that the manifest is out of
# date: atp_notebook.project.lakefile_toml writes the same [[require]].
printf '%s\n' "$toolchain" >lean-toolchain
cat >lakefile.toml <<TOML
name = "workspace"

[[require]]
name = "mathlib"
git = "https://github.com/leanprover-community/mathlib4.git"
rev = "$rev"
TOML

printf 'warm-mathlib.sh: resolving Mathlib %s for %s in %s\n' "$rev" "$toolchain" "$dir"
# Clone Mathlib and its dependencies and write lake-manifest.json; the cache
# is fetched below, where a failure can be retried.
MATHLIB_NO_CACHE_ON_UPDATE=1 lake update
[ -f lake-manifest.json ] || die "lake update wrote no lake-manifest.json"
wanted=$(cat lean-toolchain)
[ "$wanted" = "$toolchain" ] ||
    die "Mathlib $rev asks for toolchain '$wanted', not '$toolchain': pass a matching pair"

tries=1
until lake exe cache get; do
    [ "$tries" -lt 3 ] || die "lake exe cache get failed $tries times"
    tries=$((tries + 1))
    printf 'warm-mathlib.sh: retrying the cache download (try %s of 3)\n' "$tries"
    sleep 10
done
olean=.lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean
[ -f "$olean" ] || die "no $olean after lake exe cache get"

# Keep each package's checked-out revision and drop its history, which is
# most of a Mathlib clone. Lake only asks git for HEAD, `git diff` and the
# remote's URL when the manifest's revision is checked out; tags at HEAD stay
# (Lake looks them up for cloud releases).
for pkg in .lake/packages/*/; do
    [ -d "$pkg.git" ] || continue
    git -C "$pkg" tag --points-at HEAD >"$work/keep-tags"
    git -C "$pkg" for-each-ref --format='%(refname)' >"$work/refs"
    while read -r ref; do
        case $ref in
            refs/tags/*) grep -qxF "${ref#refs/tags/}" "$work/keep-tags" && continue ;;
        esac
        git -C "$pkg" update-ref --no-deref -d "$ref"
    done <"$work/refs"
    git -C "$pkg" rev-parse --verify HEAD >"$pkg.git/shallow"
    rm -f "$pkg.git/FETCH_HEAD" "$pkg.git/ORIG_HEAD"
    git -C "$pkg" reflog expire --expire=now --all
    git -C "$pkg" gc --quiet --prune=now
    git -C "$pkg" diff --quiet || die "$pkg has local changes after trimming its history"
done

# Smoke test, the way a sandbox runs a check: a fresh workdir with the
# scaffold and a linked .lake. Any output (a manifest warning, an error)
# would land in every notebook cell, so it fails the build.
smoke=$work/smoke
mkdir "$smoke"
cp lean-toolchain lakefile.toml lake-manifest.json "$smoke/"
ln -s "$dir/.lake" "$smoke/.lake"
printf 'import Mathlib\n\nexample : (2 : Nat) + 2 = 4 := by norm_num\n' >"$smoke/Smoke.lean"
printf 'warm-mathlib.sh: checking import Mathlib from a fresh workdir\n'
if ! out=$(cd "$smoke" && lake env lean Smoke.lean 2>&1); then
    die "smoke test failed: $out"
fi
[ -z "$out" ] || die "smoke test printed output (it must be silent): $out"
printf 'warm-mathlib.sh: ready: %s/.lake\n' "$dir"
