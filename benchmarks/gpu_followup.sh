#!/usr/bin/env bash
# The second GPU run of 2026-11-29 (after benchmarks/gpu_check.sh's first): the same offline build,
# then the Triton tests the first run's time limit cut off plus the ones it failed (listed in
# benchmarks/gpu_followup_tests.txt), the CUDA C++ tests it failed, benchmarks/gpu_diagnose.py, and the
# norm and model benchmarks again after the backward's program count changed.
#   GPU_CHECK_ARCHIVE=$OUT/gpu-run.tgz bash benchmarks/gpu_followup.sh /tmp/gpu-run
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-benchmarks/results/gpu-followup}
ARCHIVE=${GPU_CHECK_ARCHIVE:-}
PYTEST_WORKERS=7 MAX_JOBS=9
source benchmarks/gpu_common.sh

{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
  git log -1 --format='zenattn commit %H' 2>/dev/null; } > "$DIR/env.txt" 2>&1

step "building zenattn._C in the background (build.log)"
build_in_background

step "Triton tests: the rest of the first run's selection and its failures (tests-triton.log)"
gpu_pytest ${TESTS_LIMIT:-140} tests-triton.log @benchmarks/gpu_followup_tests.txt
pack
copy_extension

[ -n "${SKIP_CUDA_TESTS:-}" ] || {
step "CUDA C++ tests the first run failed, and test_norm_api (tests-cuda.log)"
gpu_pytest 60 tests-cuda.log tests/test_norm_api.py tests/test_norm_edge_cases.py tests/test_cuda_attention.py \
  -k "cuda and (eps_zero or one_output_unused or explicit_cuda_request or opcheck or compile or backend)"
pack
}

step "diagnostics (diagnose.log)"
timeout ${DIAG_LIMIT:-100} "$PY" benchmarks/gpu_diagnose.py ${DIAG_STEPS:-dv profile} > "$DIR/diagnose.log" 2>&1
echo "diagnose exit $?" >> "$DIR/diagnose.log"
cat "$DIR/diagnose.log" | cut -c1-150
pack

[ -n "${SKIP_BENCH:-}" ] && { step "done"; pack; exit 0; }
step "norm benchmarks (bench-norms.log)"
bench 60 norms --ops layer_norm rms_norm --dtypes bf16 --rows 16384 --hidden 1024 8192 \
  --modes fwd+bwd fwd --residual false --providers zenattn-triton zenattn-cuda torch-eager liger
step "done"
pack
