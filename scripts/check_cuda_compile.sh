#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90a (compile only) and fail on any error
# or on a register spill reported by ptxas (-Xptxas -v). Kernel files include only CUDA headers and
# our own params structs (DESIGN.md section 7), so each compiles in seconds without torch.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "cuda compile check: csrc/cuda/ holds no .cu files yet; nothing to compile"
  exit 0
fi
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "cuda compile check: nvcc not found" >&2; exit 1; }
out=$(mktemp -d)
for src in "${sources[@]}"; do
  log="$out/$(basename "$src").log"
  "$NVCC" -std=c++17 -O3 -Icsrc -c "$src" -o "$out/$(basename "$src").o" -Xptxas -v \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a 2> "$log" \
    || { cat "$log"; echo "cuda compile check: $src failed" >&2; exit 1; }
  if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$log"; then
    echo "cuda compile check: $src spills registers" >&2; exit 1
  fi
  echo "cuda compile check: $src ok"
done
