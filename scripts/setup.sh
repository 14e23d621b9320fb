#!/usr/bin/env bash
# Set up a development environment in .venv (created if missing) and build zenattn in place.
#   bash scripts/setup.sh            # torch 2.13.0 (CPU build, from this machine's local wheel)
#   ZENATTN_TORCH=skip bash scripts/setup.sh   # keep the torch already in .venv (e.g. a CUDA build)
# Torch is pinned: a bare `pip install torch` can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install --disable-pip-version-check -q "$@"; }

if [ "${ZENATTN_TORCH:-}" != "skip" ]; then
  pip_q "torch==${ZENATTN_TORCH:-2.13.0}"
fi
# Build tools (the build runs without isolation, against the torch above), then zenattn itself
# with its test and benchmark extras and Triton.
pip_q "setuptools>=64" wheel "pybind11>=2.12" "cmake>=3.21" ninja
pip_q --no-build-isolation -e ".[test,bench,triton,train]"
python -m zenattn > /dev/null  # fails loudly if the package does not import
echo "zenattn ready in .venv ($(python -c 'import zenattn, torch; print("zenattn", zenattn.__version__, "torch", torch.__version__, "kernels", zenattn.info()["extension"].get("cpu_isa"))'))"
