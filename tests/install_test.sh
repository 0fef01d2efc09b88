#!/usr/bin/env bash
# Installs EasySync to a temporary prefix, builds examples/ against it with
# find_package(EasySync), and runs the demo pair from that build.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
test -f "$tmp/prefix/lib/cmake/EasySync/EasySyncConfig.cmake" || { echo "no package config installed"; exit 1; }
cmake -S "$src/examples" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
cluster="install_test_$$"
"$tmp/build/demo" reader "$cluster" >"$tmp/reader.log" &
reader=$!
"$tmp/build/demo" writer "$cluster" 0.5 >/dev/null
wait "$reader"
grep -q "tick=" "$tmp/reader.log" || { echo "reader saw no update"; cat "$tmp/reader.log"; exit 1; }
grep -q "done. stats" "$tmp/reader.log"
echo "installed package builds and runs the examples"
