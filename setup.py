"""Build zenattn's one extension, ``zenattn._C``, with CMake + ninja against the installed torch.

Switches (environment variables):
  ZENATTN_SKIP_CUDA_BUILD=1   never compile csrc/cuda/ (default: compile it when torch has CUDA,
                              nvcc is found and csrc/cuda/ holds sources)
  ZENATTN_CUDA_ARCHS="80;90a" CUDA architectures (default sm_80 and sm_90a)
  MAX_JOBS=N                  bound on parallel compile jobs
  ZENATTN_BUILD_TYPE=Debug    CMake build type (default Release)

Install with ``pip install --no-build-isolation .`` (or ``-e .``): the extension must compile
against the torch you run, not a torch fetched into an isolated build environment.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_nvcc() -> "str | None":
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(cuda_home, "bin", "nvcc")] if cuda_home else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    found = shutil.which("nvcc")
    if found:
        return found
    return next((str(c) for c in candidates if c.exists()), None)


def _cuda_build_plan(torch) -> "tuple[bool, str]":
    """Whether to compile csrc/cuda/, and why (printed during the build)."""
    if _truthy("ZENATTN_SKIP_CUDA_BUILD"):
        return False, "ZENATTN_SKIP_CUDA_BUILD is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if not any((ROOT / "csrc" / "cuda").glob("*.cu")):
        return False, "csrc/cuda/ holds no .cu sources yet"
    nvcc = _find_nvcc()
    if nvcc is None:
        return False, "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _cmake() -> str:
    """The cmake of the ``cmake`` package (a build requirement, recent) when installed, else PATH's:
    a system cmake may be too old to know nvcc's C++20 dialect."""
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except (ImportError, AttributeError):
        return "cmake"


def _cxx_standard(cpp_extension) -> str:
    """The C++ standard torch builds its own extensions with: C++20 where torch.utils.cpp_extension
    passes -std=c++20 (newer torch, whose headers require it), C++17 before."""
    return "20" if "-std=c++20" in Path(cpp_extension.__file__).read_text() else "17"


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch
        from torch.utils import cpp_extension

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A fixed build folder (not pip's temporary one) keeps rebuilds incremental.
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
        build_dir.mkdir(parents=True, exist_ok=True)

        with_cuda, why = _cuda_build_plan(torch)
        print(f"zenattn: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})", flush=True)
        build_type = os.environ.get("ZENATTN_BUILD_TYPE", "Debug" if self.debug else "Release")

        # Torch's include and library paths come from torch itself (as torch.utils.cpp_extension
        # does) rather than find_package(Torch): that CMake config probes the CUDA toolkit, cuDNN
        # and friends, which fails or misleads on offline machines with a partial toolkit.
        cmake_args = [
            "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DZENATTN_TORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DZENATTN_TORCH_LIBRARY_DIR={cpp_extension.library_paths()[0]}",
            f"-DZENATTN_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DZENATTN_CXX_STANDARD={_cxx_standard(cpp_extension)}",
            f"-DZENATTN_VERSION={self.distribution.get_version()}",
            f"-DZENATTN_BUILD_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        if with_cuda:
            archs = os.environ.get("ZENATTN_CUDA_ARCHS", "80;90a").replace(",", ";").replace(" ", ";")
            cmake_args += [f"-DZENATTN_CUDA_ARCHS={archs}", f"-DCMAKE_CUDA_COMPILER={_find_nvcc()}"]
        build_args = ["--build", ".", "--config", build_type]
        if os.environ.get("MAX_JOBS"):
            build_args += ["--parallel", os.environ["MAX_JOBS"]]

        cmake = _cmake()
        subprocess.run([cmake, str(ROOT), *cmake_args], cwd=build_dir, check=True)
        subprocess.run([cmake, *build_args], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("zenattn._C")], cmdclass={"build_ext": CMakeBuild})
