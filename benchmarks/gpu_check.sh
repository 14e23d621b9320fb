#!/usr/bin/env bash
# The one prepared check for a lent GPU (run once, from the repository root, through the device
# tool; nothing is explored on the device). Offline: it uses the image's python3 with its torch,
# triton, pybind11 and ninja. Everything it learns goes under $OUT (default benchmarks/results/gpu-run):
#   env.txt     device, driver, versions
#   bench.log   benchmarks/bench_gpu.py: Triton kernels vs SDPA backends / torch eager, with the
#               device's matmul and copy ceilings (also gpu-<date>-<tag>.md/.json)
#   build.log   building zenattn._C (CPU kernels; tests use its dropout-mask helper)
#   tests.log   the Triton parity / edge-case / API tests on CUDA tensors (ZENATTN_TEST_DEVICE=cuda)
# Time: under 9 minutes in all (each step has its own timeout), so one rerun fits the device budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-run}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. The extension, in the background while the GPU benchmarks run (CUDA C++ kernels skipped: issue #5).
( ZENATTN_SKIP_CUDA_BUILD=1 MAX_JOBS=8 timeout 240 \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; echo "build exit $?" >> "$OUT/build.log" ) &
build_pid=$!

# 2. Speed, autotuned (issue #4's targets).
timeout 270 "$PY" benchmarks/bench_gpu.py --out "$OUT" --tag "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9-')" \
  > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
tail -25 "$OUT/bench.log"

# 3. Correctness on the GPU: the same tests as CI, with CUDA tensors and one fixed kernel
#    configuration (autotuning every shape family would take the whole budget).
wait "$build_pid"
tail -2 "$OUT/build.log"
ZENATTN_TEST_DEVICE=cuda ZENATTN_TRITON_AUTOTUNE=0 timeout 200 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_attention_parity.py tests/test_attention_edge_cases.py tests/test_attention_api.py tests/test_norm_parity.py \
  -k "triton and not gradcheck and not seq_lens" > "$OUT/tests.log" 2>&1
echo "tests exit $?" | tee -a "$OUT/tests.log"
tail -30 "$OUT/tests.log"
