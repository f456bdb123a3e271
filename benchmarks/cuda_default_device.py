"""pytest plugin for the GPU run (scripts/gpu_bench.sh): the CPU test suite, on CUDA.

    TRITON_INTERPRET=0 PYTHONPATH=benchmarks pytest tests/ops -p cuda_default_device

Tensors created without an explicit device land on INTERNS2_TEST_DEVICE (default "cuda"), so the
suite's `backend="triton"` cases launch the compiled Triton kernels instead of the interpreter, and
the torch / reference backends run on the GPU too. Tests that build tensors with a CPU generator or
an explicit CPU device stay on the CPU (or fail with a device mismatch: the run's log says which);
that is a limit of reusing CPU tests, not a kernel failure.
"""
from __future__ import annotations

import os

import torch


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("cuda_default_device: unset TRITON_INTERPRET (or set it to 0) to test compiled kernels")
    device = os.environ.get("INTERNS2_TEST_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("cuda_default_device: no CUDA device")
    torch.set_default_device(device)


def pytest_report_header(config):
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"
    return [f"default device {torch.get_default_device()} ({name}), TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET', '')!r}"]
