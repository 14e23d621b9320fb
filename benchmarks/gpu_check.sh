#!/usr/bin/env bash
# The one prepared check for a lent GPU (run once, from the repository root, through the device
# tool; nothing is explored on the device). Offline: it uses the image's python3 with its torch,
# triton, pybind11, ninja, cmake, pytest-xdist and pytest-timeout.
#   bash benchmarks/gpu_check.sh [DIR]     # DIR defaults to benchmarks/results/gpu-run
#   GPU_CHECK_ARCHIVE=$OUT/gpu-run.tgz bash benchmarks/gpu_check.sh /tmp/gpu-run   # on the device tool
# Everything goes under DIR (with GPU_CHECK_ARCHIVE set, DIR is also packed into that .tgz after
# every step, so a run cut short keeps what it had), and it prints its progress:
#   env.txt               device, driver, versions
#   build.log             building zenattn._C offline with the CUDA C++ kernels (sm_80, sm_90a), in a
#                         copy of the tree, while the Triton tests run; the .so is copied in after them
#   tests-triton.log      the parity / edge-case / API tests on CUDA tensors, Triton backend (issue #4)
#   tests-cuda.log        the same for the CUDA C++ backend, and tests/test_cuda_attention.py (issue #5)
#   diagnose.log          benchmarks/gpu_diagnose.py host dv: cProfile of the Triton eager path, D != Dv
#   bench-*.log           zenattn-bench, alone on the GPU: the issues' attention shape (bf16, D 128,
#                         N 8192), the norms, the model step, then the wider attention sweep until
#                         the time is up; rows append to results.csv/.jsonl, each run writes
#                         bench-cuda-<date>-<tag>.json/.md
# Time: about 7.5 minutes on an H200, each step under its own timeout (tests get SIGINT first, so pytest
# still prints its summary of failures).
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-benchmarks/results/gpu-run}
ARCHIVE=${GPU_CHECK_ARCHIVE:-}
source benchmarks/gpu_common.sh

step "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  nvcc --version | tail -2
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|triton|numpy|pytest|pytest-xdist|pytest-timeout|cmake|ninja|pybind11|liger|flash|xformers) "
  git log -1 --format='zenattn commit %H %cd' 2>/dev/null
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"
pack

# 1. Build the extension in a copy of the tree (so no test imports a half-written .so), while the
#    Triton tests run: they need no zenattn._C.
step "building zenattn._C in the background (build.log)"
build_in_background

# (tests/test_norm_api.py needs zenattn._C at collection: it runs in the CUDA step.)
step "Triton backend tests on CUDA tensors (tests-triton.log)"
gpu_pytest 150 tests-triton.log tests/test_norm_parity.py tests/test_norm_edge_cases.py \
  tests/test_attention_parity.py tests/test_attention_edge_cases.py tests/test_attention_api.py \
  -k "triton and not gradcheck and not seq_lens"
pack

copy_extension
"$PY" -c "import zenattn, json; print(json.dumps(zenattn.info(), indent=1))" >> "$DIR/env.txt" 2>&1
tail -n 25 "$DIR/env.txt"
pack

step "CUDA C++ backend tests, and test_norm_api (tests-cuda.log)"
gpu_pytest 75 tests-cuda.log tests/test_cuda_attention.py tests/test_norm_parity.py tests/test_norm_edge_cases.py \
  tests/test_norm_api.py -k "(cuda and not gradcheck) or test_norm_api"
pack

# The open questions of the first runs (benchmarks/results/gpu-h200-2026-11-29.md): where the ~1 ms
# of host time per Triton norm call goes, and D != Dv attention under autotuning.
step "diagnostics: host time, D != Dv autotuned (diagnose.log)"
timeout 60 "$PY" benchmarks/gpu_diagnose.py host dv > "$DIR/diagnose.log" 2>&1
echo "diagnose exit $?" >> "$DIR/diagnose.log"
grep -E "^==|^dv|tottime|exit" "$DIR/diagnose.log" | head -20
pack

# 2. Speed, alone on the GPU (no tests beside it). The issues' attention shape first.
step "attention, bf16 B 2 H 16 N 8192 D 128 (bench-attention-8k.log)"
bench 110 attention-8k --ops attention --dtypes bf16 --batch 2 --heads 16 --seq-lens 8192 --head-dims 128 \
  --causal false true --modes fwd fwd+bwd \
  --providers zenattn-triton zenattn-cuda sdpa-flash sdpa-efficient sdpa-cudnn flash-attn xformers

step "norms, bf16 16384 rows (bench-norms.log)"
bench 60 norms --ops layer_norm rms_norm --dtypes bf16 --rows 16384 --hidden 1024 4096 8192 \
  --modes fwd fwd+bwd --residual false \
  --providers zenattn-triton zenattn-cuda torch-eager liger

step "reference model training step, gpt2-small bf16 (bench-model.log)"
bench 40 model --ops model --dtypes bf16 --presets gpt2-small --providers zenattn-modules torch-modules

step "wider attention sweep until the time is up (bench-attention-sweep.log)"
left=$(( 420 - ($(date +%s) - T0) ))
if [ "$left" -gt 30 ]; then
  bench "$left" attention-sweep --ops attention --dtypes bf16 --batch 2 --heads 16 --seq-lens 2048 16384 4096 \
    --head-dims 128 64 --causal true false --modes fwd fwd+bwd \
    --providers zenattn-triton zenattn-cuda sdpa-flash sdpa-cudnn
fi

step "done"
pack
grep -h -E "passed|failed|pytest exit" "$DIR"/tests-*.log
tail -n 1 "$DIR/build.log"
