"""Short causal conv1d at Intern-S2 shapes (D = 8192 channels, W = 4, SiLU, no bias).

    .venv/bin/pytest benchmarks/ops/bench_conv1d.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_conv1d.py --benchmark-only -p no:xdist

Prefill (`causal_conv1d_fn`): B = 1, T in {512, 8192} ({512} when quick), x in the layout the model
passes (the projection output transposed: [B, D, T] with stride 1 along D). Decode update
(`causal_conv1d_update`): one token, B in {1, 32}, conv_state [B, D, 4] (the transformers cache
keeps W steps) updated in place. Backends: reference (the transformers fallback), torch, triton
(only on a CUDA/NPU device), and on CUDA the causal-conv1d package when importable. fp32 on the
CPU, bf16 elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

D, W = 8192, 4  # Intern-S2: conv_dim = 2 * 16 * 128 + 32 * 128, conv kernel 4
LENGTHS = [512] if QUICK else [512, 8192]
BATCHES = [1, 32]
BACKENDS = ["reference", "torch", "triton", "causal_conv1d"]

DEVICE = select_device()
DTYPE = select_dtype(DEVICE)




def _weight():
    return (torch.randn(D, W, device=DEVICE) * 0.5).to(DTYPE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", LENGTHS)
def test_prefill(benchmark, backend, T):
    """One linear-attention layer's conv over T tokens of the transposed projection output."""
    skip_unavailable(backend, DEVICE)
    op = "causal_conv1d_fn"
    label(benchmark, op=op, shape=f"B=1 D={D} T={T} W={W}", backend=backend, device=DEVICE, dtype=DTYPE)
    x = torch.randn(1, T, D, device=DEVICE).to(DTYPE).transpose(1, 2)
    weight = _weight()
    if backend == "causal_conv1d":
        from causal_conv1d import causal_conv1d_fn as pkg_fn

        call = lambda: pkg_fn(x, weight, None, activation="silu")  # noqa: E731
    else:
        call = lambda: ops.causal_conv1d_fn(x, weight, None, activation="silu", backend=backend)  # noqa: E731
    call()
    synchronize(DEVICE)
    if DEVICE.type == "cpu" and T >= 8192:
        out = benchmark.pedantic(call, rounds=3, iterations=1)  # seconds per call on the CPU
    else:
        out = benchmark(call)
    assert out.shape == (1, D, T) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", BATCHES)
def test_update(benchmark, backend, B):
    """One decode step: the new token's conv output and the in-place roll of the [B, D, 4] state."""
    skip_unavailable(backend, DEVICE)
    op = "causal_conv1d_update"
    label(benchmark, op=op, shape=f"B={B} D={D} T=1 W={W} S={W}", backend=backend, device=DEVICE, dtype=DTYPE)
    x = torch.randn(B, 1, D, device=DEVICE).to(DTYPE).transpose(1, 2)
    state = torch.randn(B, D, W, device=DEVICE).to(DTYPE)
    weight = _weight()
    if backend == "causal_conv1d":
        from causal_conv1d import causal_conv1d_update as pkg_update

        call = lambda: pkg_update(x, state, weight, None, "silu")  # noqa: E731
    else:
        call = lambda: ops.causal_conv1d_update(x, state, weight, None, "silu", backend=backend)  # noqa: E731
    call()
    synchronize(DEVICE)
    out = benchmark(call)
    assert out.shape == (B, D, 1) and torch.isfinite(out.float()).all()
