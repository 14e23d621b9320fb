"""Triton kernels (the ``triton`` backend). Imported lazily, at an op's first use: importing
triton takes about a second. See ``zenattn/triton/attention.py`` and ``zenattn/triton/norm.py``."""

import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1, read by triton at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
