"""The CUDA C++ sources compile here, without a GPU (DESIGN.md section 7): every csrc/cuda/*.cu with
nvcc for sm_80 and sm_90a, failing on any error or register spill (scripts/check_cuda_compile.sh),
and the torch-facing launchers (csrc/cuda/*.cpp) and the pybind11 module built with CUDA
(csrc/bindings.cpp with ZENATTN_WITH_CUDA) through g++ against torch's headers and the CUDA
runtime's. Nothing here runs a kernel: that needs a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def _cuda_include():
    """The CUDA toolkit's include folder (the one holding cuda_runtime.h)."""
    import os

    candidates = [Path(NVCC).resolve().parent.parent / "include"] if NVCC else []
    candidates += [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)


CUDA_INCLUDE = _cuda_include()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed here")


@needs_nvcc
def test_cuda_kernels_compile_for_sm80_and_sm90a_without_spills():
    proc = subprocess.run(["bash", "scripts/check_cuda_compile.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={"NVCC": NVCC, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sources = sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    assert sources, "csrc/cuda/ holds no kernels"
    for name in sources:
        assert f"csrc/cuda/{name} ok" in proc.stdout


@needs_nvcc
@pytest.mark.parametrize("source", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cpp"))
                         + ["csrc/bindings.cpp"])
def test_cuda_launchers_compile_against_torch(source):
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import include_paths

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    assert CUDA_INCLUDE is not None, f"nvcc is at {NVCC} but no cuda_runtime.h was found beside it"
    # The standard setup.py builds with: torch's own for extensions (C++20 in newer torch).
    std = "-std=c++20" if "-std=c++20" in Path(cpp_extension.__file__).read_text() else "-std=c++17"
    flags = [std, "-fsyntax-only", "-w", "-DZENATTN_WITH_CUDA", '-DZENATTN_VERSION="test"',
             f"-I{ROOT / 'csrc'}", f"-I{CUDA_INCLUDE}", f"-I{sysconfig.get_paths()['include']}"]
    flags += [f"-I{p}" for p in include_paths()]
    proc = subprocess.run([cxx, *flags, str(ROOT / source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_attention_fragment_index_math_against_emulated_ptx(tmp_path):
    """The CUDA attention kernels' lane addresses and accumulator mapping (csrc/cuda/attention_layout.h)
    give S = Q K^T and O = P V exactly, with ldmatrix and mma.sync emulated on the host from the PTX
    ISA's description (tests/cuda_layout_check.cpp). Needs only g++: it runs without nvcc or a GPU."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "layout_check"
    build = subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "cuda_layout_check.cpp"),
                            "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout[-2000:]
