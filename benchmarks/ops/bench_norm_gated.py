"""Gated RMSNorm at Intern-S2 shapes: rows of 128 (one per value head), B*T*32 rows.

    .venv/bin/pytest benchmarks/ops/bench_norm_gated.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_norm_gated.py --benchmark-only -p no:xdist

Cases: prefill B=1, T=512 (16384 rows; also T=8192 unless quick) and decode B=32, T=1 (1024 rows).
Backends: reference (transformers' Qwen3_5MoeRMSNormGated forward), torch, triton (only on a
CUDA/NPU device), and on CUDA fla's FusedRMSNormGated when importable (it does not round the
normalised value to the input dtype: same op, slightly different rounding). fp32 on the CPU, bf16
elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

HV, N = 32, 128  # Intern-S2: 32 value heads of 128
CASES = [(1, 512), (32, 1)] if QUICK else [(1, 512), (1, 8192), (32, 1)]  # (B, T)
BACKENDS = ["reference", "torch", "triton", "fla"]
EPS = 1e-6

DEVICE = select_device()
DTYPE = select_dtype(DEVICE)



@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T", CASES, ids=[f"B{b}-T{t}" for b, t in CASES])
def test_rms_norm_gated(benchmark, backend, B, T):
    skip_unavailable(backend, DEVICE)
    op = "rms_norm_gated"
    shape = f"B={B} T={T} rows={B * T * HV} N={N}"
    label(benchmark, op=op, shape=shape, backend=backend, device=DEVICE, dtype=DTYPE)
    # as the layer calls it: core_attn_out and z reshaped to [B*T*32, 128]
    x = torch.randn(B * T * HV, N, device=DEVICE).to(DTYPE)
    z = torch.randn(B * T * HV, N, device=DEVICE).to(DTYPE)
    weight = (1 + 0.1 * torch.randn(N, device=DEVICE)).to(DTYPE)
    if backend == "fla":
        from fla.modules import FusedRMSNormGated

        mod = FusedRMSNormGated(N, eps=EPS).to(device=DEVICE, dtype=DTYPE)
        with torch.no_grad():
            mod.weight.copy_(weight)
        call = lambda: mod(x, z)  # noqa: E731
    else:
        call = lambda: ops.rms_norm_gated(x, z, weight, EPS, backend=backend)  # noqa: E731
    with torch.no_grad():
        call()
        synchronize(DEVICE)
        out = benchmark(call)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
