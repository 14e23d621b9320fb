import os
import random

import pytest
import torch

# Where the tests make their tensors. By default CPU tensors, which the Triton kernels run on in
# Triton's interpreter (triton reads TRITON_INTERPRET when first imported; zenattn imports triton
# only when a Triton op first runs). ZENATTN_TEST_DEVICE=cuda makes CUDA the default device, so
# the same tests run the Triton kernels compiled for the GPU; run them there with `-k triton`
# (the cpu backend's cases cannot take CUDA tensors). See benchmarks/gpu_check.sh.
TEST_DEVICE = os.environ.get("ZENATTN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    torch.set_default_device(TEST_DEVICE)


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so a failure reproduces exactly."""
    torch.manual_seed(0)
    random.seed(0)
    yield
