"""Triton kernels (the ``triton`` backend). Imported lazily, at an op's first use: importing
triton takes about a second. See ``zenattn/triton/norm.py``."""
