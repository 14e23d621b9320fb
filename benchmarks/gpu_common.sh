# Shared by benchmarks/gpu_check.sh and gpu_followup.sh (sourced from the repository root, with
# DIR = the results folder and ARCHIVE = an optional .tgz of it): the helpers of a lent-GPU run.
PY=${PYTHON:-python3}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo "[$(basename "$0" .sh) +$(( $(date +%s) - T0 ))s] $*"; }
# DIR packed into ARCHIVE after every step, so a run cut short keeps what it had.
pack() { [ -n "$ARCHIVE" ] && tar czf "$ARCHIVE" -C "$(dirname "$DIR")" "$(basename "$DIR")" 2>/dev/null; true; }
# pytest on CUDA tensors, parallel workers (Triton compiles on the CPU), a per-test limit so one hung
# kernel cannot take the whole run; SIGINT at the limit so pytest reports what it has.
gpu_pytest() {
  local limit=$1 log=$2; shift 2
  ZENATTN_TEST_DEVICE=cuda ZENATTN_TRITON_AUTOTUNE=0 timeout -s INT -k 15 "$limit" \
    "$PY" -m pytest -p no:cacheprovider -n "${PYTEST_WORKERS:-6}" -v --tb=short -rfE --timeout 90 "$@" \
    > "$DIR/$log" 2>&1
  echo "pytest exit $?" >> "$DIR/$log"
  grep -E "^(FAILED|ERROR)|passed|failed|pytest exit" "$DIR/$log" | tail -25
}
# zenattn-bench into DIR under a time limit (SIGINT: rows written so far stay in results.csv/.jsonl).
bench() {
  local limit=$1 tag=$2; shift 2
  timeout -s INT -k 10 "$limit" "$PY" -m zenattn.bench --out "$DIR" --tag "$tag" --budget 0.5 "$@" \
    > "$DIR/bench-$tag.log" 2>&1
  echo "bench exit $?" >> "$DIR/bench-$tag.log"
  tail -n 25 "$DIR/bench-$tag.log"
  pack
}
# Build zenattn._C with the CUDA kernels in a copy of the tree (so nothing imports a half-written
# .so), in the background: sets build_pid; copy_extension copies the result in once it is done.
build_in_background() {
  BUILD=$(mktemp -d)
  tar cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./bench-out --exclude=./.whl \
    --exclude=./benchmarks/results --exclude='*.so' . | tar xf - -C "$BUILD"
  ( cd "$BUILD" && MAX_JOBS=${MAX_JOBS:-10} timeout 240 "$PY" setup.py build_ext --inplace > "$DIR/build.log" 2>&1
    echo "build exit $? after $(( $(date +%s) - T0 ))s since the start" >> "$DIR/build.log" ) &
  build_pid=$!
}
copy_extension() {
  wait "$build_pid"
  tail -n 3 "$DIR/build.log"
  cp "$BUILD"/zenattn/_C*.so zenattn/ 2>/dev/null && ls -l zenattn/_C*.so
}
