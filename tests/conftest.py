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


# ---- the data behind docs/reliability.md (tests/reliability_report.py renders it) -----------------

_OUTCOMES: dict = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        counts = _OUTCOMES.setdefault(report.nodeid.split("::")[0], {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_sessionfinish(session, exitstatus):
    """With ZENATTN_RELIABILITY_JSON=FILE: write the run's outcomes per test file, every parity check's
    errors (tests/parity.py RECORDS) and the fuzzing examples run per backend (tests/test_fuzz.py)."""
    path = os.environ.get("ZENATTN_RELIABILITY_JSON")
    if not path:
        return
    import datetime
    import json
    import platform
    import sys

    import zenattn

    parity = sys.modules.get("parity")
    fuzz = sys.modules.get("test_fuzz")
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "zenattn": zenattn.__version__, "triton": zenattn.info().get("triton"),
                     "python": platform.python_version()},
        "device": TEST_DEVICE, "exitstatus": int(exitstatus), "outcomes": _OUTCOMES,
        "records": [list(r) for r in getattr(parity, "RECORDS", [])],
        "fuzz_examples": [[name, backend, n] for (name, backend), n in getattr(fuzz, "EXAMPLES", {}).items()],
        "fuzz_profile": getattr(fuzz, "PROFILE", None),
    }
    with open(path, "w") as fh:
        json.dump(data, fh)
