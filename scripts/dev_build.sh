#!/usr/bin/env bash
# Developer build: compile the extension(s) into ./deeprank in place, without pip.
#   scripts/dev_build.sh [BUILD_DIR] [extra cmake args...]
# Then run tests from the repository root with PYTHONPATH=. (e.g. PYTHONPATH=. python -m pytest tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/dev}
shift || true
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python3)" -DDEEPRANK_CUDA="${DEEPRANK_CUDA:-OFF}" "$@" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
for so in "$build"/_C*.so "$build"/_cuda*.so; do
  [ -e "$so" ] || continue
  cp "$so" "$root/deeprank/.$(basename "$so").tmp" && mv "$root/deeprank/.$(basename "$so").tmp" "$root/deeprank/$(basename "$so")"
done
echo "built into $root/deeprank"
