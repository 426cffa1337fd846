#!/usr/bin/env bash
# Installs the Debian packages ukprobes builds with, when missing.
# Why each is here: see README "Dependencies".
set -euo pipefail
packages=(build-essential cmake pkg-config
          libzydis-dev libelf-dev libfmt-dev libcli11-dev
          libgtest-dev libgmock-dev libbenchmark-dev
          clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ukprobes: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
