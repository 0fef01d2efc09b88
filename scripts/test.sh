#!/usr/bin/env bash
# Sets up, builds and runs every test: the Release build with warnings as errors, the Python
# package (pytest, with and without torch), the same tests under AddressSanitizer +
# UndefinedBehaviorSanitizer, the network layer's tests under ThreadSanitizer, and each
# decoder's fuzzer for a bounded time.
# Usage: scripts/test.sh [--quick]   (--quick: the Release build and the Python package only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

run_preset() {
  echo "== $1 =="
  cmake --preset "$1" "${@:3}" >/dev/null
  cmake --build --preset "$1" -j2 ${2:+--target $2}
  ctest --preset "$1"
}

# The torch extension and its C++ tests build against the torch users install from PyPI.
export EASYSYNC_PYTHON="$PWD/build/py-venv/bin/python"

# The Python package as `pip install .` builds it, in an environment with torch and NumPy and
# in one without, tested across real processes.
python_tests() {
  echo "== python =="
  "$EASYSYNC_PYTHON" -m pip install -q --force-reinstall --no-deps .
  build/py-venv-lite/bin/python -m pip install -q --force-reinstall --no-deps .
  (cd tests/python &&
    "$EASYSYNC_PYTHON" -m pytest -q -p no:cacheprovider . &&
    EASYSYNC_EXPECT_NO_TORCH=1 ../../build/py-venv-lite/bin/python -m pytest -q -p no:cacheprovider \
      test_package.py test_without_torch.py)
}

run_preset ci "" -DEASYSYNC_WITH_PYTHON=ON  # the bindings too, with warnings as errors
python_tests
[ "${1:-}" = "--quick" ] && exit 0
run_preset asan
# The network layer under ThreadSanitizer (callers and the progress thread share the UCX
# worker), with the hub the tests start built the same way, and the sole-owner checks that
# decide when a shared buffer is written in place (core_test's SoleOwner cases). The preset
# turns UCX's memory hooks off: ThreadSanitizer intercepts the same calls (mmap, malloc), and
# the process crashes with both.
run_preset tsan "easysync-hub core_test ucx_worker_test ordered_pool_test background_apply_test
  net_protocol_test net_test net_sync_test net_robustness_test net_device_test net_udp_test
  net_udp_netns_test net_hosts_test"
run_preset fuzz "fuzz_frame_decoder fuzz_sparse_decoder fuzz_roundtrip"
