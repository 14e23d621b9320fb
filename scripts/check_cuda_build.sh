#!/usr/bin/env bash
# Builds zenattn._C with its CUDA C++ kernels the way a GPU machine does (setup.py -> CMake -> nvcc
# and g++, linked against a CUDA build of torch), here without a GPU, and checks what comes out:
# the extension loads, says its CUDA kernels are built, carries device code for every architecture
# asked for, and the tests that run without a GPU pass against it. Nothing runs on a GPU.
#   bash scripts/check_cuda_build.sh [VENV]     # VENV: a scratch venv, ${TMPDIR:-/tmp}/zenattn-cuda-build
# ZENATTN_CUDA_TORCH picks the torch (default torch==2.14.1: the CUDA 13 build pip takes from this
# machine's disk; the GPU image has torch 2.11 + CUDA 13). The extension itself is installed with
# --no-index: the build needs nothing from the network.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${1:-${TMPDIR:-/tmp}/zenattn-cuda-build}
TORCH=${ZENATTN_CUDA_TORCH:-torch==2.14.1}
ARCHS=${ZENATTN_CUDA_ARCHS:-80;90a}
say() { echo "cuda build check: $*"; }

python3 -m venv "$VENV"
# numpy < 2.4: Triton 3.6's interpreter (torch 2.11 pins triton 3.6) fails on numpy 2.4's scalars.
"$VENV/bin/pip" install -q "$TORCH" "setuptools>=64" wheel "pybind11>=2.12" "cmake>=3.21" ninja \
  pytest hypothesis expecttest "numpy<2.4"
"$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else f'torch {torch.__version__} has no CUDA')"
say "$("$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)")"

# Offline, as on the GPU machine: no index, no dependencies fetched.
start=$SECONDS
ZENATTN_CUDA_ARCHS=$ARCHS MAX_JOBS=${MAX_JOBS:-2} \
  "$VENV/bin/pip" install -q --no-build-isolation --no-index --no-deps --force-reinstall "$REPO"
say "built in $((SECONDS - start)) s"

# From outside the repository, so that the installed package (not ./zenattn) is imported.
cd "$VENV"
ARCHS=$ARCHS "$VENV/bin/python" - <<'EOF'
import os
import subprocess
from pathlib import Path

import zenattn
from zenattn import _C

info = zenattn.info()
assert "site-packages" in zenattn.__file__, f"imported {zenattn.__file__}, not the installed package"
assert info["extension"]["cuda"] is True, f"extension built without CUDA kernels: {info['extension']}"
assert info["backends"]["cuda"]["built"], info["backends"]["cuda"]
for name in ("cuda_attention_fwd", "cuda_attention_bwd", "cuda_norm_fwd", "cuda_norm_bwd"):
    assert hasattr(_C, name), f"zenattn._C has no {name}"
sections = subprocess.run(["readelf", "-S", "-W", _C.__file__], capture_output=True, text=True, check=True).stdout
assert ".nv_fatbin" in sections, "zenattn._C holds no device code (.nv_fatbin section)"
blob = Path(_C.__file__).read_bytes()
for arch in os.environ["ARCHS"].split(";"):
    assert f"sm_{arch}".encode() in blob, f"no device code for sm_{arch}"
print("cuda build check: loads;", info["backends"]["cuda"]["reason"], "here; device code for",
      os.environ["ARCHS"], "in", Path(_C.__file__).name, f"({len(blob) / 2**20:.1f} MiB)")
EOF
# The tests that need no GPU and touch the CUDA build: its launchers' input checks, and the parity
# suite's norm cases on the CPU kernels of this same extension (a torch other than CI's).
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda_attention.py" \
  "$REPO/tests/test_norm_api.py" -x
say "ok"
