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
PY=${PYTHON:-python3}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo "[gpu_followup +$(( $(date +%s) - T0 ))s] $*"; }
pack() { [ -n "$ARCHIVE" ] && tar czf "$ARCHIVE" -C "$(dirname "$DIR")" "$(basename "$DIR")" 2>/dev/null; true; }
gpu_pytest() {
  local limit=$1 log=$2; shift 2
  ZENATTN_TEST_DEVICE=cuda ZENATTN_TRITON_AUTOTUNE=0 timeout -s INT -k 15 "$limit" \
    "$PY" -m pytest -p no:cacheprovider -n 7 -v --tb=short -rfE --timeout 90 "$@" > "$DIR/$log" 2>&1
  echo "pytest exit $?" >> "$DIR/$log"
  grep -E "^(FAILED|ERROR)|passed|failed|pytest exit" "$DIR/$log" | tail -25
}
bench() {
  local limit=$1 tag=$2; shift 2
  timeout -s INT -k 10 "$limit" "$PY" -m zenattn.bench --out "$DIR" --tag "$tag" --budget 0.5 "$@" \
    > "$DIR/bench-$tag.log" 2>&1
  echo "bench exit $?" >> "$DIR/bench-$tag.log"
  tail -n 22 "$DIR/bench-$tag.log"
  pack
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
  git log -1 --format='zenattn commit %H' 2>/dev/null; } > "$DIR/env.txt" 2>&1

step "building zenattn._C in the background (build.log)"
BUILD=$(mktemp -d)
tar cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./bench-out --exclude=./.whl \
  --exclude=./benchmarks/results --exclude='*.so' . | tar xf - -C "$BUILD"
( cd "$BUILD" && MAX_JOBS=9 timeout 240 "$PY" setup.py build_ext --inplace > "$DIR/build.log" 2>&1
  echo "build exit $?" >> "$DIR/build.log" ) &
build_pid=$!

step "Triton tests: the rest of the first run's selection and its failures (tests-triton.log)"
gpu_pytest ${TESTS_LIMIT:-140} tests-triton.log @benchmarks/gpu_followup_tests.txt
pack
wait "$build_pid"
tail -n 1 "$DIR/build.log"
cp "$BUILD"/zenattn/_C*.so zenattn/

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
