#!/usr/bin/env bash
# The one prepared check for a lent GPU (run once, from the repository root, through the device
# tool; nothing is explored on the device). Offline: it uses the image's python3 with its torch,
# triton, pybind11 and ninja.
#   bash benchmarks/gpu_check.sh [OUT]        # OUT defaults to $OUT, else benchmarks/results/gpu-run
# Everything it learns goes under OUT, and it prints its progress:
#   env.txt      device, driver, versions
#   build.log    building zenattn._C offline (CPU kernels, and CUDA kernels where csrc/cuda/ has any)
#   bench.log    zenattn-bench --sweep gpu (issue #8's GPU sweep): every zenattn GPU backend against
#                SDPA's flash / efficient / cuDNN backends, torch eager and compiled norms, the
#                reference model step; results.csv/.jsonl, bench-cuda-<date>-<gpu>.json/.md and plots
#   flex.log     FlexAttention beside zenattn on a few shapes (it compiles per shape: kept apart)
#   tests.log    the parity / edge-case / API tests on CUDA tensors (ZENATTN_TEST_DEVICE=cuda)
# Time: under 8 minutes on an H200 (build in parallel; steps time-limited to 270 + 60 + 120 s; results are appended case by
# case, so a step cut short keeps what it measured).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results/gpu-run}}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

step "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9-')

# 1. The extension (offline, against the image's torch), in the background while Triton benchmarks.
step "building zenattn._C in the background (build.log)"
( MAX_JOBS=8 timeout 300 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  echo "build exit $?" >> "$OUT/build.log" ) &
build_pid=$!

# 2. Speed: the harness's GPU sweep. sdpa-math (N x N in memory) is left out at these sizes; the
#    correctness bound then uses SDPA flash's own error (the rows name the baseline used).
step "zenattn-bench --sweep gpu (bench.log)"
timeout 270 "$PY" -m zenattn.bench --sweep gpu --out "$OUT" --tag "$TAG" \
  --providers zenattn-triton zenattn-cuda sdpa-flash sdpa-efficient sdpa-cudnn flash-attn xformers \
              torch-eager torch-compile liger zenattn-modules torch-modules > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
tail -15 "$OUT/bench.log"

step "FlexAttention beside zenattn (flex.log)"
timeout 60 "$PY" -m zenattn.bench --ops attention --dtypes bf16 --batch 2 --heads 16 --seq-lens 2048 8192 \
  --head-dims 128 --causal true --providers zenattn-triton sdpa-flash flex --out "$OUT" --tag "$TAG-flex" \
  > "$OUT/flex.log" 2>&1
echo "flex exit $?" | tee -a "$OUT/flex.log"

# 3. Correctness on the GPU: the same tests as CI, with CUDA tensors and one fixed Triton
#    configuration (autotuning every shape family would take the whole budget).
wait "$build_pid"
tail -2 "$OUT/build.log"
step "parity tests on CUDA tensors (tests.log)"
ZENATTN_TEST_DEVICE=cuda ZENATTN_TRITON_AUTOTUNE=0 timeout 120 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_attention_parity.py tests/test_attention_edge_cases.py tests/test_attention_api.py tests/test_norm_parity.py \
  -k "(triton or cuda) and not gradcheck and not seq_lens" > "$OUT/tests.log" 2>&1
echo "tests exit $?" | tee -a "$OUT/tests.log"
tail -30 "$OUT/tests.log"
step "done"
