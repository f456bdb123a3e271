"""Gated DeltaNet prefill: chunk_gated_delta_rule at Intern-S2 shapes (B=1, Hk=16, Hv=32, K=V=128).

    .venv/bin/pytest benchmarks/ops/bench_gdn_chunk.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_gdn_chunk.py --benchmark-only -p no:xdist

T in {512, 2048, 8192} ({512, 2048} when quick). Backends: reference (the transformers fallback,
q/k repeated to 32 heads), torch, triton (only on a CUDA/NPU device), and on CUDA fla's
chunk_gated_delta_rule when fla is importable. q/k are L2-normalised inside the op (as the model
calls it), with an fp32 initial state and the final state returned. fp32 on the CPU, bf16 elsewhere.
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
LENGTHS = [512, 2048] if QUICK else [512, 2048, 8192]
BACKENDS = ["reference", "torch", "triton", "fla"]


DEVICE = select_device()
DTYPE = select_dtype(DEVICE)




def _inputs(T):
    mk = lambda *s: torch.randn(*s, device=DEVICE).to(DTYPE)  # noqa: E731
    a = torch.randn(1, T, HV, device=DEVICE)
    A_log = torch.rand(HV, device=DEVICE) * 2 - 1
    return dict(
        q=mk(1, T, HK, D), k=mk(1, T, HK, D), v=mk(1, T, HV, D),
        g=-A_log.exp() * F.softplus(a + 0.5),  # fp32, as the model's gating returns it
        beta=torch.randn(1, T, HV, device=DEVICE).sigmoid().to(DTYPE),
        state=torch.randn(1, HV, D, D, device=DEVICE) * 0.1,
    )


def _fla_prefill(x):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk

    kw = dict(initial_state=x["state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
    q, k = x["q"], x["k"]
    try:  # recent fla reads grouped value heads natively
        return fla_chunk(q, k, x["v"], x["g"], x["beta"], **kw)
    except Exception:
        q, k = q.repeat_interleave(HV // HK, dim=2), k.repeat_interleave(HV // HK, dim=2)
        return fla_chunk(q, k, x["v"], x["g"], x["beta"], **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", LENGTHS)
def test_prefill(benchmark, backend, T):
    """One linear-attention layer's chunked prefill of T tokens (chunk 64), final state out."""
    skip_unavailable(backend, DEVICE)
    op = "chunk_gated_delta_rule"
    shape = f"B=1 T={T} Hk={HK} Hv={HV} K=V={D}"
    label(benchmark, op=op, shape=shape, backend=backend, device=DEVICE, dtype=DTYPE)
    x = _inputs(T)
    if backend == "fla":
        call = lambda: _fla_prefill(x)  # noqa: E731
    else:
        def call():
            return ops.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["state"],
                                              output_final_state=True, use_qk_l2norm_in_kernel=True,
                                              backend=backend)
    call()
    synchronize(DEVICE)
    if DEVICE.type == "cpu" and T >= 2048:
        # seconds per call on the CPU: a few rounds, not pytest-benchmark's default minimum of 5
        o, s = benchmark.pedantic(call, rounds=3, iterations=1)
    else:
        o, s = benchmark(call)
    assert o.shape == (1, T, HV, D) and s.shape == (1, HV, D, D) and torch.isfinite(o.float()).all()
