#!/usr/bin/env bash
# Build a wheel of this source tree, install it into a fresh virtual environment that has torch and nothing
# else, and check it from a directory outside the tree (tests/packaging/check_installed_wheel.py).
#   tests/packaging/wheel_test.sh [PYTHON]     (default .venv/bin/python: an interpreter with torch and the
#                                               build requirements, which builds the wheel)
# The environment gets the builder's exact torch version:
#   - when the builder's base interpreter has that torch (e.g. a GPU image's system python), the environment
#     lends it (--system-site-packages); whatever else that interpreter has is hidden by the check;
#   - otherwise pip installs it (torch==<version>: the local CPU wheel on the development machines),
#     without compiling its bytecode (a throwaway environment).
# The wheel links the object files of the last build (setup.py keeps them in build/temp.*), so after
# `make setup` only the link runs; everything else lives in a temporary directory, removed on exit.
# ASTRA_BUILD_CUDA defaults to 0 here: the check runs the CPU backend (benchmarks/gpu_check.sh builds CUDA).
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$PWD
PY=${1:-.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/astra-wheel-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { printf '[wheel-test] %s\n' "$*"; }

start=$SECONDS
# setuptools' build and egg-info directories go to $work instead of the tree
printf '[build]\nbuild_base = %s\n[egg_info]\negg_base = %s\n' "$work/build" "$work" > "$work/setup.cfg"
DIST_EXTRA_CONFIG="$work/setup.cfg" ASTRA_BUILD_CUDA=${ASTRA_BUILD_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" .
wheel=$(echo "$work"/dist/astra_inference-*.whl)
log "built $(basename "$wheel") in $((SECONDS - start)) s"
left=$(find . \( -path ./.git -o -path ./.venv -o -path './build/temp.*' \) -prune -o -type f -newer "$work/setup.cfg" -print)
if [ -n "$left" ]; then
  log "error: the wheel build wrote into the source tree (setuptools without DIST_EXTRA_CONFIG?):"
  echo "$left" | head -20
  exit 1
fi

start=$SECONDS
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
base=$("$PY" -c 'import sys; print(sys._base_executable)')
if "$base" -c "import sys, torch; sys.exit(torch.__version__ != '$torch_version')" 2>/dev/null; then
  "$base" -m venv --system-site-packages "$work/venv"
  how="lent by $base"
else
  "$base" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q --no-compile "torch==$torch_version"
  how="installed"
fi
# --force-reinstall: installs into the environment even when a lending interpreter has astra-inference
"$work/venv/bin/python" -m pip install -q --no-compile --no-deps --force-reinstall "$wheel"
log "environment with torch $torch_version ($how) and the wheel in $((SECONDS - start)) s"

start=$SECONDS
cp tests/packaging/check_installed_wheel.py "$work/"
(cd "$work" && env -u PYTHONPATH "$work/venv/bin/python" -E check_installed_wheel.py "$SRC")
log "checks passed in $((SECONDS - start)) s"
