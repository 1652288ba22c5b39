#!/bin/sh
# System packages some tests use: busybox-static (the Docker test image and
# busybox-compatibility tests), gawk (the stand-in REPL under GNU awk; the
# system's `awk` stays what it was), git, and Debian's Chromium (the browser test).
# Installs what is missing when it can (root with apt-get); otherwise says what
# to install and returns 0: those tests then skip (outside CI) with a reason.
set -eu

packages="busybox-static gawk git chromium fonts-dejavu-core"
missing=""
for p in $packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  awk_before=$(readlink -f /usr/bin/awk 2>/dev/null || true)
  # shellcheck disable=SC2086 # one word per package
  apt-get install -y -qq --no-install-recommends $missing
  # gawk would take over `awk` (a higher priority): keep the awk the machine had
  if [ -n "$awk_before" ] && [ "$(readlink -f /usr/bin/awk)" != "$awk_before" ]; then
    update-alternatives --quiet --set awk "$awk_before" || true
  fi
else
  echo "note: for the full test suite install:$missing (e.g. sudo apt-get install$missing)" >&2
fi
