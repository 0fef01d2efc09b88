#!/bin/bash
# libeasysync.so exports EasySync's symbols only (core/exports.map). A foreign symbol it exports
# (CUB, libcu++, an inline copy of standard-library code) can be bound by whatever process loads
# it: a torch extension's std::ostream insertions once ran into such a copy and crashed.
set -euo pipefail
lib=$1
foreign=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v -e '8easysync' -e '7msgpack' || true)
count=$(nm -D --defined-only "$lib" | grep -c '8easysync' || true)
if [ "$count" -lt 100 ]; then
  echo "FAIL: $lib exports only $count EasySync symbols"
  exit 1
fi
if [ -n "$foreign" ]; then
  echo "FAIL: $lib exports symbols that are not EasySync's:"
  echo "$foreign" | head -20
  exit 1
fi
echo "ok: $count EasySync symbols, nothing else"
