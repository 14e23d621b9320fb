#!/usr/bin/env bash
# The one prepared check for a lent GPU (run once, from the repository root, through the device
# tool; nothing is explored on the device). Offline: it uses the image's python3 with its torch,
# triton, pybind11 and ninja.
#   bash benchmarks/gpu_check.sh [OUT]        # OUT defaults to $OUT, else benchmarks/results/gpu-run
# Everything it learns goes under OUT, and it prints its progress:
#   env.txt      device, driver, versions
#   build.log        building zenattn._C offline (C++ CPU and CUDA C++ kernels)
#   bench.log        zenattn-bench --sweep gpu --ops attention (issue #8's GPU sweep): Triton against
#                    SDPA's flash / efficient / cuDNN backends (and flash-attn, xformers if installed)
#   bench-norms.log  the sweep's norms (triton and cuda against torch eager / compiled, Liger) and the
#                    reference model's training step; all runs append to results.csv/.jsonl and write
#                    bench-cuda-<date>-<gpu>-<part>.json/.md and plots
#   bench-cuda-attention.log  the CUDA C++ attention beside Triton and SDPA flash at issue #5's
#                    shape (bf16, D 128, N 8192, fwd and fwd+bwd), after the build
#   flex.log         FlexAttention beside zenattn on one shape (it compiles per shape: kept apart)
#   tests.log    the CUDA C++ attention tests, then the parity / edge-case / API tests on CUDA
#                tensors (ZENATTN_TEST_DEVICE=cuda)
# Time: under 8 minutes on an H200. The build (up to 200 s) runs beside the first benchmark (170 s);
# then 100 + 50 + 30 + 95 s: 475 s at most. Results are appended case by case, so a step cut short
# keeps what it measured.
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

# 1. The extension (offline, against the image's torch, with the CUDA C++ kernels), in the
#    background while the Triton attention is benchmarked.
step "building zenattn._C in the background (build.log)"
( MAX_JOBS=12 timeout 200 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  echo "build exit $?" >> "$OUT/build.log" ) &
build_pid=$!

# 2. Speed: the harness's GPU sweep. Attention first (Triton against SDPA's backends; sdpa-math,
#    N x N in memory, is left out at these sizes, so the correctness bound uses SDPA flash's own error:
#    the rows name the baseline used). Then, with the extension built, the norms (Triton and CUDA C++
#    against torch eager / compiled and Liger) and the reference model's training step.
step "zenattn-bench --sweep gpu --ops attention (bench.log)"
timeout 170 "$PY" -m zenattn.bench --sweep gpu --ops attention --out "$OUT" --tag "$TAG-attention" \
  --providers zenattn-triton zenattn-cuda sdpa-flash sdpa-efficient sdpa-cudnn flash-attn xformers > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
tail -8 "$OUT/bench.log"

wait "$build_pid"
tail -2 "$OUT/build.log"
step "zenattn-bench --sweep gpu --ops layer_norm rms_norm model (bench-norms.log)"
timeout 100 "$PY" -m zenattn.bench --sweep gpu --ops layer_norm rms_norm model --out "$OUT" --tag "$TAG-norms" \
  --providers zenattn-triton zenattn-cuda torch-eager torch-compile liger zenattn-modules torch-modules \
  > "$OUT/bench-norms.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench-norms.log"
tail -8 "$OUT/bench-norms.log"

step "CUDA C++ attention beside Triton, the issue's shape (bench-cuda-attention.log)"
timeout 50 "$PY" -m zenattn.bench --ops attention --dtypes bf16 --batch 2 --heads 16 --seq-lens 8192 \
  --head-dims 128 --causal false --modes fwd fwd+bwd --providers zenattn-triton zenattn-cuda sdpa-flash \
  --out "$OUT" --tag "$TAG-cuda-attention" > "$OUT/bench-cuda-attention.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench-cuda-attention.log"
tail -8 "$OUT/bench-cuda-attention.log"

step "FlexAttention beside zenattn (flex.log)"
timeout 30 "$PY" -m zenattn.bench --ops attention --dtypes bf16 --batch 2 --heads 16 --seq-lens 4096 \
  --head-dims 128 --causal true --providers zenattn-triton sdpa-flash flex --out "$OUT" --tag "$TAG-flex" \
  > "$OUT/flex.log" 2>&1
echo "flex exit $?" | tee -a "$OUT/flex.log"

# 3. Correctness on the GPU: the same tests as CI, with CUDA tensors (tests/parity.py then runs the
#    triton backend, and cuda where zenattn has CUDA C++ kernels) and one fixed Triton configuration
#    (autotuning every shape family would take the whole budget).
step "parity tests on CUDA tensors (tests.log)"
ZENATTN_TEST_DEVICE=cuda ZENATTN_TRITON_AUTOTUNE=0 timeout 95 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_cuda_attention.py tests/test_norm_parity.py tests/test_norm_edge_cases.py tests/test_attention_parity.py \
  tests/test_attention_edge_cases.py tests/test_attention_api.py \
  -k "(triton or cuda) and not gradcheck and not seq_lens" > "$OUT/tests.log" 2>&1
echo "tests exit $?" | tee -a "$OUT/tests.log"
tail -30 "$OUT/tests.log"
step "done"
