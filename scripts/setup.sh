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
  python3 python3-venv python3-dev
  nftables  # tests/net_udp_netns_test.cc: real packet loss in a network namespace
  iproute2  # ip, tc: tests/net_hosts_test.cc (a veth pair), net-tensor's shaped links
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

# Python: build/py-venv has what the package's tests use from PyPI (torch as users install
# it, NumPy, pytest, and the build requirements); build/py-venv-lite has pytest only, to test
# the package without torch and NumPy.
# EASYSYNC_SETUP_PYTHON=0 skips them (the C++ image in docker/ needs neither).
[ "${EASYSYNC_SETUP_PYTHON:-1}" = "0" ] && exit 0
PY_VENV=build/py-venv
PY_LITE=build/py-venv-lite
PY_PACKAGES=(torch numpy pytest expecttest pybind11 scikit-build-core)
if ! "$PY_VENV/bin/python" -c "import torch, numpy, pytest, expecttest, pybind11, scikit_build_core" 2>/dev/null; then
  echo "setup: installing ${PY_PACKAGES[*]} into $PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/python" -m pip install -q --upgrade pip
  "$PY_VENV/bin/python" -m pip install -q "${PY_PACKAGES[@]}"
fi
if ! "$PY_LITE/bin/python" -c "import pytest" 2>/dev/null; then
  echo "setup: installing pytest into $PY_LITE"
  python3 -m venv "$PY_LITE"
  "$PY_LITE/bin/python" -m pip install -q pytest
fi
echo "setup: Python environments present"
