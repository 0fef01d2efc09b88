#!/usr/bin/env bash
# Installs everything EasySync needs on a fresh Debian 12 machine. Idempotent: when all is
# present it only checks, in about a second.
#
# The CUDA toolkit is not in Debian's archive at the version EasySync targets; where nvcc
# is installed (e.g. /usr/local/cuda) the build uses it, elsewhere cuda/ builds its host
# twins only.
set -euo pipefail

DEBIAN_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev clang-format
  libgtest-dev libgmock-dev libbenchmark-dev
  libzstd-dev libxxhash-dev libucx-dev libsodium-dev libmsgpack-cxx-dev libeigen3-dev
  python3 python3-venv
  nftables  # tests/net_udp_netns_test.cc: real packet loss in a network namespace
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: Debian packages present"
