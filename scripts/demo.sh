#!/usr/bin/env bash
# Sets up, builds, and runs the demo: a writer and a reader process on one shared-memory
# cluster, no server. Ends by itself in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cmake --preset dev >/dev/null
cmake --build --preset dev -j2 --target demo
demo=build/dev/examples/demo
cluster="demo_$$"
"$demo" reader "$cluster" &
reader=$!
# The reader declares the object first; the writer then updates it for 4 seconds.
"$demo" writer "$cluster" 4
wait "$reader"
