import os
import pathlib
import sys

# Triton kernels run on the CPU through the interpreter in this suite. It must be set before any
# kernel module is imported: @triton.jit picks the interpreter at decoration time.
os.environ.setdefault("TRITON_INTERPRET", "1")

# tests/ holds shared helpers (tolerance.py) that test files import by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread per test process: the suite runs under pytest-xdist with one worker per
# core, and oversubscribed ATen thread pools made it 7-20x slower on the 2-core CI machine.
torch.set_num_threads(1)


def pytest_runtest_setup(item):
    """Tests of the Intern-S2-Preview remote-code stand-in (the `interns2_remote` family, a `remote_dir`
    fixture, the `stand_in` marker) skip where its transformers 5.2.0-derived code cannot run unpatched,
    with the reason (e.g. an import error on a newer transformers)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    family = any(isinstance(v, str) and v == "interns2_remote" for v in params.values())
    if family or "remote_dir" in getattr(item, "fixturenames", ()) or item.get_closest_marker("stand_in"):
        from interns2_fast import models

        reason = models.stand_in_unavailable()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def model_factory():
    """make(family="qwen3_5_moe", dtype=fp32) -> a cached tiny model, unpatched again after the test."""
    from interns2_fast.patching import unpatch
    from tiny_models import tiny_model

    handed = []

    def make(family="qwen3_5_moe", dtype=torch.float32):
        m = tiny_model(family, dtype)
        handed.append(m)
        return m

    yield make
    for m in handed:
        unpatch(m)
