#!/usr/bin/env bash
# Everything a CUDA machine should check, in one call (the GPU lease is ~15 minutes):
#   1. build the extension with CUDA (astra_kernels._C_cuda) against the machine's torch;
#   2. run the kernel test suites on the GPU: Triton compiled (no interpreter), the CUDA
#      extension, bf16 included, rotary remote keys (tests/test_rope_attention.py), and the CUDA
#      backends' bad-input checks (tests/test_cuda_bad_inputs.py);
#   3. benchmark vq_encode/vq_decode and mixed-precision attention (rotary remote keys included)
#      against torch baselines (do_bench; TFLOP/s and GB/s against the card's roofline);
#   4. a functional ASTRA run on the GPU (2 ranks), with the NCCL transport attempted;
#   5. the wire fault tests on NCCL (bad frames, codes >= K, handshake refusals, hung and dead peers; they
#      need two GPUs and are skipped, saying so, on one).
# Usage: bash benchmarks/gpu/gpu_check.sh [OUT_DIR]   (default $OUT, else runs/gpu)
# Carried wheels in .whl/ (e.g. faiss-cpu for calibration) are installed first.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT_DIR=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
stage() { printf '\n=== %s ===\n' "$*"; }
run() {  # run <seconds> <log> <cmd...>: keep going on failure, remember it
  local limit=$1 log=$2; shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "!! $* -> exit $rc"; status=1; }
}

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/astra-site .whl/*.whl && export PYTHONPATH=/tmp/astra-site
fi

stage "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$OUT_DIR/gpu.txt"

stage "build (CUDA extension, sm_90)"
run 420 build.log env ASTRA_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} \
  $PY -m pip install --no-build-isolation --no-deps -e .
$PY -c "import astra_kernels as ak; print('backends on cuda:', ak.available_backends('cuda'))" | tee -a "$OUT_DIR/gpu.txt"

stage "kernel tests on the GPU (Triton compiled, CUDA extension, bf16)"
run 600 tests.log $PY -m pytest -q -p no:cacheprovider tests/test_vq_encode.py tests/test_vq_decode.py \
  tests/test_pack_codes.py tests/test_bad_input.py tests/test_registration.py tests/test_mixed_precision_attention.py \
  tests/test_op_checks.py tests/test_cuda_bad_inputs.py tests/test_rope_attention.py

stage "benchmarks"
run 300 bench_vq.log $PY benchmarks/gpu/gpu_bench_vq.py "$OUT_DIR/gpu_vq.json"
run 300 bench_attention.log $PY benchmarks/gpu/gpu_bench_attention.py "$OUT_DIR/gpu_attention.json"

stage "ASTRA on the GPU: 2 ranks (gloo), then NCCL"
RUN_ARGS=(--model gpt2 --size small --layers 4 --tokens 1024 --ranks 2 --groups 1 --codebook-size 1024
          --device cuda --repeat 3 --compare-single)
if $PY -c "import faiss" 2>/dev/null; then
  run 300 run_gloo.log $PY -m astra run "${RUN_ARGS[@]}" --transport gloo --json "$OUT_DIR/run_gloo.json"
  # NCCL refuses two ranks on one GPU ("duplicate GPU"); recorded as what it is.
  run 300 run_nccl.log $PY -m astra run "${RUN_ARGS[@]}" --transport nccl --json "$OUT_DIR/run_nccl.json"
else
  echo "faiss is not installed here (carry a faiss-cpu wheel in .whl/ for calibration): skipping astra run"
fi

stage "wire faults on NCCL (two GPUs; skipped on one)"
run 300 wire_faults_nccl.log $PY -m pytest -q -rs -p no:cacheprovider tests/test_wire_faults.py -k nccl

stage "summary"
grep -h -E "passed|failed|error" "$OUT_DIR/tests.log" | tail -3
for f in "$OUT_DIR"/bench_*.log; do [ -f "$f" ] && tail -n 25 "$f"; done
exit $status
