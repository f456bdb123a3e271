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

import importlib.util
import os

import pytest
import torch

from interns2_fast import device as _device
from interns2_fast import ops
from interns2_fast.bench import select_device, select_dtype, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

D, W = 8192, 4  # Intern-S2: conv_dim = 2 * 16 * 128 + 32 * 128, conv kernel 4
LENGTHS = [512] if QUICK else [512, 8192]
BATCHES = [1, 32]
BACKENDS = ["reference", "torch", "triton", "causal_conv1d"]

DEVICE = select_device()
DTYPE = select_dtype(DEVICE)


def _skip_unavailable(backend):
    if backend == "triton" and not (DEVICE.type != "cpu" and _device.triton_usable(DEVICE)):
        pytest.skip("triton: needs a CUDA/NPU device (the CPU interpreter is no fast path)")
    if backend == "causal_conv1d":
        if DEVICE.type != "cuda" or importlib.util.find_spec("causal_conv1d") is None:
            pytest.skip("causal_conv1d: needs CUDA and the causal-conv1d package")


def _label(benchmark, op, shape, backend):
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, shape=shape, backend=backend, device=str(DEVICE), dtype=str(DTYPE))


def _weight():
    return (torch.randn(D, W, device=DEVICE) * 0.5).to(DTYPE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", LENGTHS)
def test_prefill(benchmark, backend, T):
    """One linear-attention layer's conv over T tokens of the transposed projection output."""
    _skip_unavailable(backend)
    op = "causal_conv1d_fn"
    _label(benchmark, op, f"B=1 D={D} T={T} W={W}", backend)
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
    _skip_unavailable(backend)
    op = "causal_conv1d_update"
    _label(benchmark, op, f"B={B} D={D} T=1 W={W} S={W}", backend)
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
