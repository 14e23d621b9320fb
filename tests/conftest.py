import os
import random

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter, which reads this
# variable when triton is first imported (zenattn imports triton only when a Triton op first runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so a failure reproduces exactly."""
    torch.manual_seed(0)
    random.seed(0)
    yield
