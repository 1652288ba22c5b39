#!/bin/sh
# Install elan, the Lean toolchain manager, at a pinned release checked by
# SHA-256, with TOOLCHAIN installed and made the default.
#
#   usage: install-elan.sh TOOLCHAIN
#
# Installs into $ELAN_HOME (default: $HOME/.elan); add "$ELAN_HOME/bin" to
# PATH afterwards. Shared by the image's Dockerfile and by binder/postBuild,
# so both get the same elan. Another elan release: set ELAN_VERSION and its
# archive's ELAN_SHA256.
set -eu

die() {
    printf 'install-elan.sh: %s\n' "$*" >&2
    exit 1
}

toolchain=${1:?usage: install-elan.sh TOOLCHAIN (e.g. leanprover/lean4:v4.26.0)}
ELAN_HOME=${ELAN_HOME:-$HOME/.elan}
export ELAN_HOME

pinned=v4.2.3
version=${ELAN_VERSION:-$pinned}
case "$(uname -m)" in
    x86_64 | amd64)
        target=x86_64-unknown-linux-gnu
        pinned_sha=df0b2b3a439961ffcbb3985214365ffe40f49bc871df04dff268c7d8e21ca8b2
        ;;
    aarch64 | arm64)
        target=aarch64-unknown-linux-gnu
        pinned_sha=cb69af0803b04157bc30201c29c12fca882bb3ad8b43476b8d2d3064810bc3ac
        ;;
    *) die "no elan build for machine '$(uname -m)' (x86_64 and aarch64 only)" ;;
esac
if [ -n "${ELAN_SHA256:-}" ]; then
    sha=$ELAN_SHA256
elif [ "$version" = "$pinned" ]; then
    sha=$pinned_sha
else
    die "ELAN_VERSION=$version needs ELAN_SHA256, the SHA-256 of elan-$target.tar.gz"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
url="https://github.com/leanprover/elan/releases/download/$version/elan-$target.tar.gz"
printf 'install-elan.sh: elan %s (%s), toolchain %s, into %s\n' "$version" "$target" "$toolchain" "$ELAN_HOME"
curl --proto '=https' --tlsv1.2 --fail --silent --show-error --location --retry 3 \
    --output "$tmp/elan.tar.gz" "$url" || die "could not download $url"
printf '%s  %s\n' "$sha" "$tmp/elan.tar.gz" >"$tmp/elan.sha256"
sha256sum -c "$tmp/elan.sha256" >/dev/null || die "checksum mismatch for $url (expected $sha)"
tar -xzf "$tmp/elan.tar.gz" -C "$tmp"
"$tmp/elan-init" -y --no-modify-path --default-toolchain "$toolchain"

# elan's proxies (lean, lake, ...) are copies or hard links of the elan
# binary, which picks its role from the name it is called by. Turn them into
# symlinks: a Docker COPY between build stages would otherwise store one full
# copy of the binary per proxy.
for proxy in "$ELAN_HOME"/bin/*; do
    [ "$proxy" = "$ELAN_HOME/bin/elan" ] && continue
    [ -L "$proxy" ] && continue
    if cmp -s "$proxy" "$ELAN_HOME/bin/elan"; then
        ln -sf elan "$proxy"
    fi
done

"$ELAN_HOME/bin/lean" --version
