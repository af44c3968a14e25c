#!/usr/bin/env bash
# Create or refresh the project's virtual environment and build the extension.
# Idempotent: a second run only rebuilds what changed.
#   scripts/setup_env.sh [VENV]        (default .venv)
# Installs torch only when it is missing (the CPU wheel torch==2.13.0 here;
# a machine that already has torch, e.g. a GPU image, keeps its own), then the
# project as pyproject.toml declares it: every extra and the test tools,
# pip install --no-build-isolation -e ".[all,dev]".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
TORCH_SPEC=${ASTRA_TORCH_SPEC:-torch==2.13.0}
TRITON_SPEC=${ASTRA_TRITON_SPEC:-triton==3.7.1}

log() { printf '[setup] %s\n' "$*"; }

# System packages (Debian): MPI for the mpi4py transport, iproute2 for emulated links,
# Fashion-MNIST and the KJV Bible for the accuracy experiments.
APT_PACKAGES="openmpi-bin libopenmpi-dev iproute2 nftables dataset-fashion-mnist bible-kjv bible-kjv-text"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    log "warning: missing system packages:$missing (need root to install); tests that need them will skip"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c "import torch" 2>/dev/null || { log "installing $TORCH_SPEC"; "$PY" -m pip install -q "$TORCH_SPEC"; }
"$PY" -c "import triton" 2>/dev/null || { log "installing $TRITON_SPEC"; "$PY" -m pip install -q "$TRITON_SPEC"; }

# Reinstall when the declarations, the build script or a native source changed (ninja then
# recompiles only the changed sources: setup.py keeps the object files in build/).
stamp="$VENV/.install.sha"
want=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import astra_kernels._C" 2>/dev/null; then
  # --no-build-isolation builds with what is installed: the build requirements first
  read -ra build_requires <<< "$("$PY" -c '
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy inside pip
    from pip._vendor import tomli as tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')"
  # the torch and triton installed above stay: nothing may resolve them again (an unpinned torch is a CUDA build)
  pins=$(mktemp)
  "$PY" -W ignore -c 'import torch, triton; print(f"torch=={torch.__version__}\ntriton=={triton.__version__}")' > "$pins"
  log "installing the build requirements: ${build_requires[*]}"
  "$PY" -m pip install -q -c "$pins" "${build_requires[@]}"
  log "installing the project, its extras and test tools, building the extension (pip install --no-build-isolation -e \".[all,dev]\")"
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q -c "$pins" --no-build-isolation -e ".[all,dev]"
  rm -f "$pins"
  echo "$want" > "$stamp"
fi
log "ready: $("$PY" -c 'import torch, astra_kernels as ak; print("torch", torch.__version__, "backends", ak.available_backends())')"
