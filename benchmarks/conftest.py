"""Shared pieces of the benchmark suite (pytest-benchmark).

Run a suite with `interns2-fast bench` (tables, JSON, plot) or directly:

    .venv/bin/pytest benchmarks/ops --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/e2e --benchmark-only -p no:xdist

Environment:
  INTERNS2_BENCH_QUICK=1      shrink every case list (the quick suite runs in minutes on 2 CPU cores)
  INTERNS2_BENCH_DEVICE=...   cpu | cuda | cuda:1 | npu ... (default: the best device present)
  INTERNS2_BENCH_DTYPE=...    float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 elsewhere)

Conventions every benchmark follows (the op files set them themselves; `bench_label` is a helper,
also importable as `interns2_fast.bench.label`):
  benchmark.group = "<op> <shape>"
  benchmark.extra_info.update(op=..., shape=..., backend=..., device=..., dtype=...)
`interns2-fast bench` computes each case's ratio to the `reference` backend of the same group.

On CUDA / NPU the `benchmark` fixture is wrapped so that every timed call ends with a device
synchronisation (and one precedes the first): kernels run asynchronously, and a timer read without
a sync measures only the launch. On the CPU the fixture is pytest-benchmark's own, untouched.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast.bench import label, select_device, select_dtype, synchronize  # noqa: E402,F401

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"


def triton_available(device: torch.device) -> bool:
    """Can the triton backend be benchmarked here? (never on the CPU: the interpreter is no fast path)"""
    from interns2_fast import device as _device

    return device.type != "cpu" and _device.triton_usable(device)


class SyncedBenchmark:
    """pytest-benchmark's fixture with a device synchronisation after every timed call."""

    def __init__(self, inner, device: torch.device):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_device", device)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def _synced(self, fn):
        device = self._device

        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            synchronize(device)
            return result

        return call

    def __call__(self, fn, *args, **kwargs):
        synchronize(self._device)
        return self._inner(self._synced(fn), *args, **kwargs)

    def pedantic(self, target, *args, **kwargs):
        synchronize(self._device)
        return self._inner.pedantic(self._synced(target), *args, **kwargs)


# --- collection: `pytest benchmarks/...` collects bench_*.py without changing pytest.ini --------

def pytest_collect_file(file_path, parent):
    # Explicit file arguments are collected by pytest's python plugin already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config):
    dev = select_device()
    return [f"interns2_fast benchmarks: device {dev}, dtype {select_dtype(dev)}, quick={QUICK}, "
            f"torch threads {torch.get_num_threads()}"]


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return select_device()


@pytest.fixture(scope="session")
def bench_dtype(bench_device) -> torch.dtype:
    return select_dtype(bench_device)


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    return QUICK


@pytest.fixture
def bench_label():
    """`bench_label(benchmark, op=..., shape=..., backend=..., device=..., dtype=..., **extra)`."""
    return label


@pytest.fixture
def benchmark(benchmark, bench_device):
    """On accelerators: pytest-benchmark's fixture with a sync after each timed call."""
    if bench_device.type == "cpu":
        return benchmark
    return SyncedBenchmark(benchmark, bench_device)


@pytest.fixture(autouse=True)
def _bench_seed():
    torch.manual_seed(0)
    yield
