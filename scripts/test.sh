#!/usr/bin/env bash
# Sets up, builds and runs every test: the Release build with warnings as errors, the same
# tests under AddressSanitizer + UndefinedBehaviorSanitizer, and each decoder's fuzzer for
# a bounded time. Usage: scripts/test.sh [--quick]   (--quick: the Release build only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

run_preset() {
  echo "== $1 =="
  cmake --preset "$1" >/dev/null
  cmake --build --preset "$1" -j2 ${2:+--target $2}
  ctest --preset "$1"
}

run_preset ci
[ "${1:-}" = "--quick" ] && exit 0
run_preset asan
run_preset fuzz "fuzz_frame_decoder fuzz_sparse_decoder fuzz_roundtrip"
