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

import os

import pytest
import torch
import torch.nn.functional as F

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

HK, HV, D = 16, 32, 128  # Intern-S2 linear attention: 16 key heads, 32 value heads, K = V = 128
DECODE_BATCHES = [1, 8] if QUICK else [1, 8, 32]
GATING_CASES = [(1, 1), (1, 2048)] if QUICK else [(1, 1), (32, 1), (1, 2048)]
BACKENDS = ["reference", "torch", "triton", "fla"]


DEVICE = select_device()
DTYPE = select_dtype(DEVICE)





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
    skip_unavailable(backend, DEVICE)
    op = "fused_recurrent_gated_delta_rule_with_gating"
    label(benchmark, op=op, shape=f"B={B} T=1 Hk={HK} Hv={HV} K=V={D}", backend=backend, device=DEVICE, dtype=DTYPE)
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
    synchronize(DEVICE)
    o, s = benchmark(step)
    assert o.shape == (B, 1, HV, D) and torch.isfinite(o.float()).all()


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("B, T", GATING_CASES, ids=lambda v: str(v))
def test_gating(benchmark, backend, B, T):
    """g, beta from the raw projections (g fp32, beta in the input dtype)."""
    skip_unavailable(backend, DEVICE)
    label(benchmark, op="gdn_gating", shape=f"B={B} T={T} Hv={HV}", backend=backend, device=DEVICE, dtype=DTYPE)
    a = torch.randn(B, T, HV, device=DEVICE).to(DTYPE)
    b = torch.randn(B, T, HV, device=DEVICE).to(DTYPE)
    A_log = torch.rand(HV, device=DEVICE).to(DTYPE)
    dt_bias = torch.randn(HV, device=DEVICE).to(DTYPE)
    call = lambda: ops.gdn_gating(A_log, a, dt_bias, b, backend=backend)  # noqa: E731
    call()
    synchronize(DEVICE)
    g, beta = benchmark(call)
    ref = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    assert torch.allclose(g, ref, rtol=1e-5, atol=1e-6)
