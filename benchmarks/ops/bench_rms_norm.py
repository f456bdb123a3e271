"""Residual add + (1 + w) RMSNorm at Intern-S2 shapes: rows of hidden 2048, one per token.

    .venv/bin/pytest benchmarks/ops/bench_rms_norm.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_rms_norm.py --benchmark-only -p no:xdist

Cases: decode B=1 and B=32 (T=1), prefill B=1, T=512 (also T=8192 unless quick). Backends:
reference (the decoder's `residual + h` then transformers' Qwen3_5MoeRMSNorm forward), torch,
triton (only on a CUDA/NPU device). fp32 on the CPU, bf16 elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

H = 2048  # Intern-S2 hidden size
CASES = [(1, 1), (32, 1), (1, 512)] if QUICK else [(1, 1), (32, 1), (1, 512), (1, 8192)]  # (B, T)
BACKENDS = ["reference", "torch", "triton"]
EPS = 1e-6

DEVICE = select_device()
DTYPE = select_dtype(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T", CASES, ids=[f"B{b}-T{t}" for b, t in CASES])
def test_add_rms_norm(benchmark, backend, B, T):
    skip_unavailable(backend, DEVICE)
    op = "add_rms_norm"
    label(benchmark, op=op, shape=f"B={B} T={T} H={H}", backend=backend, device=DEVICE, dtype=DTYPE)
    x = torch.randn(B, T, H, device=DEVICE).to(DTYPE)
    residual = torch.randn(B, T, H, device=DEVICE).to(DTYPE)
    weight = (0.1 * torch.randn(H, device=DEVICE)).to(DTYPE)
    call = lambda: ops.add_rms_norm(x, residual, weight, EPS, backend=backend)  # noqa: E731
    with torch.no_grad():
        call()
        synchronize(DEVICE)
        out, res = benchmark(call)
    assert out.shape == x.shape and res.shape == x.shape and torch.isfinite(out.float()).all()
