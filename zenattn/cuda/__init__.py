"""The CUDA C++ kernels (the ``cuda`` backend): Python adapters from zenattn._C's CUDA launchers,
which take the CUDA stream as an argument, to the launcher signatures every backend implements.
See ``csrc/cuda/`` for the kernels and their torch-facing launchers."""
