"""Gated DeltaNet decode: one step (gating + recurrence, T = 1) and the gating alone, at Intern-S2 shapes.

    .venv/bin/pytest benchmarks/ops/bench_gdn_recurrent.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_gdn_recurrent.py --benchmark-only -p no:xdist

Backends: reference (the transformers fallback: torch_recurrent_gated_delta_rule after the inline
gating and the repeat of q/k), torch, triton (only on a CUDA/NPU device), and on CUDA fla's
fused_recurrent_gated_delta_rule (after the same gating) when fla is importable. Each backend runs
the step the way a patched model would: reference returns a new state (the fallback cannot update
in place), torch / triton / fla update the cache state in place. fp32 on the CPU, bf16 elsewhere.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from interns2_fast import device as _device
from interns2_fast import ops

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

HK, HV, D = 16, 32, 128  # Intern-S2 linear attention: 16 key heads, 32 value heads, K = V = 128
DECODE_BATCHES = [1, 8] if QUICK else [1, 8, 32]
GATING_CASES = [(1, 1), (1, 2048)] if QUICK else [(1, 1), (32, 1), (1, 2048)]
BACKENDS = ["reference", "torch", "triton", "fla"]


def _device_and_dtype():
    try:
        from interns2_fast.bench import select_device, select_dtype
    except ImportError:  # the suite's shared helpers are optional here
        name = os.environ.get("INTERNS2_BENCH_DEVICE")
        dev = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return dev, (torch.float32 if dev.type == "cpu" else torch.bfloat16)
    dev = select_device()
    return dev, select_dtype(dev)


DEVICE, DTYPE = _device_and_dtype()


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    elif DEVICE.type == "npu":
        torch.npu.synchronize(DEVICE)  # type: ignore[attr-defined]


def _skip_unavailable(backend):
    if backend == "triton" and not (DEVICE.type != "cpu" and _device.triton_usable(DEVICE)):
        pytest.skip("triton: needs a CUDA/NPU device (the CPU interpreter is no fast path)")
    if backend == "fla":
        if DEVICE.type != "cuda" or importlib.util.find_spec("fla") is None:
            pytest.skip("fla: needs CUDA and flash-linear-attention")


def _label(benchmark, op, shape, backend):
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, shape=shape, backend=backend, device=str(DEVICE), dtype=str(DTYPE))


def _decode_inputs(B):
    mk = lambda *s: torch.randn(*s, device=DEVICE).to(DTYPE)  # noqa: E731
    return dict(
        q=mk(B, 1, HK, D), k=mk(B, 1, HK, D), v=mk(B, 1, HV, D), a=mk(B, 1, HV), b=mk(B, 1, HV),
        A_log=(torch.rand(HV, device=DEVICE) * 2 - 1).to(DTYPE), dt_bias=torch.randn(HV, device=DEVICE).to(DTYPE),
        state=torch.randn(B, HV, D, D, device=DEVICE) * 0.1,
    )


def _fla_step(x):
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent

    g, beta = ops.gdn_gating(x["A_log"], x["a"], x["dt_bias"], x["b"], backend="torch")
    q, k = x["q"], x["k"]
    try:  # fla >= 0.4 reads grouped value heads natively
        return fla_recurrent(q, k, x["v"], g, beta, initial_state=x["state"], output_final_state=True,
                             use_qk_l2norm_in_kernel=True)
    except Exception:
        q, k = q.repeat_interleave(HV // HK, dim=2), k.repeat_interleave(HV // HK, dim=2)
        return fla_recurrent(q, k, x["v"], g, beta, initial_state=x["state"], output_final_state=True,
                             use_qk_l2norm_in_kernel=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", DECODE_BATCHES)
def test_decode_step(benchmark, backend, B):
    """One linear-attention decode step: gating + recurrence on a [B, 32, 128, 128] fp32 state."""
    _skip_unavailable(backend)
    op = "fused_recurrent_gated_delta_rule_with_gating"
    _label(benchmark, op, f"B={B} T=1 Hk={HK} Hv={HV} K=V={D}", backend)
    x = _decode_inputs(B)
    args = (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"])
    if backend == "fla":
        step = lambda: _fla_step(x)  # noqa: E731
    elif backend == "reference":
        def step():
            return ops.fused_recurrent_gated_delta_rule_with_gating(
                *args, initial_state=x["state"], output_final_state=True, use_qk_l2norm_in_kernel=True,
                backend="reference")
    else:
        def step():
            return ops.fused_recurrent_gated_delta_rule_with_gating(
                *args, initial_state=x["state"], inplace_final_state=True, use_qk_l2norm_in_kernel=True,
                backend=backend)
    step()
    _sync()
    o, s = benchmark(step)
    assert o.shape == (B, 1, HV, D) and torch.isfinite(o.float()).all()


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("B, T", GATING_CASES, ids=lambda v: str(v))
def test_gating(benchmark, backend, B, T):
    """g, beta from the raw projections (g fp32, beta in the input dtype)."""
    _skip_unavailable(backend)
    _label(benchmark, "gdn_gating", f"B={B} T={T} Hv={HV}", backend)
    a = torch.randn(B, T, HV, device=DEVICE).to(DTYPE)
    b = torch.randn(B, T, HV, device=DEVICE).to(DTYPE)
    A_log = torch.rand(HV, device=DEVICE).to(DTYPE)
    dt_bias = torch.randn(HV, device=DEVICE).to(DTYPE)
    call = lambda: ops.gdn_gating(A_log, a, dt_bias, b, backend=backend)  # noqa: E731
    call()
    _sync()
    g, beta = benchmark(call)
    ref = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    assert torch.allclose(g, ref, rtol=1e-5, atol=1e-6)
