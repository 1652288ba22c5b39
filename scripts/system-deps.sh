#!/bin/sh
# System packages some tests use: busybox-static (the Docker test image and
# busybox-compatibility tests), git, and Debian's Chromium (the browser test).
# Installs what is missing when it can (root with apt-get); otherwise says what
# to install and returns 0: those tests then skip (outside CI) with a reason.
set -eu

packages="busybox-static git chromium fonts-dejavu-core"
missing=""
for p in $packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  apt-get install -y -qq --no-install-recommends $missing
else
  echo "note: for the full test suite install:$missing (e.g. sudo apt-get install$missing)" >&2
fi
