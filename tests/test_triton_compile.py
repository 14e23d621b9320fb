"""The Triton kernels compile for NVIDIA GPUs (sm_80 and sm_90), here, without a GPU.

The interpreter (how the other tests run the kernels on CPU tensors) executes kernel bodies in numpy
and accepts code the GPU compiler rejects: a module-level float read inside a kernel, a dot below
the 16x16x16 minimum, a tile that does not fit in shared memory. ``triton_compile_check.py`` runs the
real compiler (Triton -> PTX -> cubin with the ptxas in the triton wheel) on each kernel with
representative specializations, in a subprocess without TRITON_INTERPRET, and this test checks each
case compiled and fits in its architecture's shared memory. It says nothing about results on a GPU:
that is what the GPU run of the parity tests is for (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from triton_compile_check import CASES  # noqa: E402

CHECKER = Path(__file__).with_name("triton_compile_check.py")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is the default
    run = subprocess.run([sys.executable, str(CHECKER)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_kernel_compiles_for_gpu(compiled, case_id):
    result = compiled[case_id]
    assert result["ok"], result["error"]
    assert result["shared"] <= result["limit"], (
        f"needs {result['shared']} bytes of shared memory; the architecture allows {result['limit']}")
