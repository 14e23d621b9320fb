import random

import pytest
import torch


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state, so a failure reproduces exactly."""
    torch.manual_seed(0)
    random.seed(0)
    yield
