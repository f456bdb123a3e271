"""GQA decode attention at Intern-S2 shapes: 16 q / 2 kv heads of 256, a static cache, sigmoid gate.

    .venv/bin/pytest benchmarks/ops/bench_decode_attention.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_decode_attention.py --benchmark-only -p no:xdist

Cases: B=1 and B=8, cache of Lmax = 4096 filled to 1024 (also Lmax 32768 filled to 8192 unless
quick), this token's k/v written by the op. Backends: reference (transformers'
eager_attention_forward with the padded-cache mask, then the gate), torch, triton (only on a
CUDA/NPU device). fp32 on the CPU, bf16 elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

HQ, HKV, D = 16, 2, 256
CASES = [(1, 4096, 1024), (8, 4096, 1024)] if QUICK else [(1, 4096, 1024), (8, 4096, 1024), (1, 32768, 8192)]
BACKENDS = ["reference", "torch", "triton"]

DEVICE = select_device()
DTYPE = select_dtype(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,Lmax,n", CASES, ids=[f"B{b}-L{n}of{m}" for b, m, n in CASES])
def test_decode_attention(benchmark, backend, B, Lmax, n):
    skip_unavailable(backend, DEVICE)
    label(benchmark, op="decode_attention", shape=f"B={B} Hq={HQ} Hkv={HKV} D={D} len={n} Lmax={Lmax}",
          backend=backend, device=DEVICE, dtype=DTYPE)
    q = torch.randn(B, HQ, D, device=DEVICE).to(DTYPE)
    gate = torch.randn(B, HQ, D, device=DEVICE).to(DTYPE)
    k_cache = torch.randn(B, HKV, Lmax, D, device=DEVICE).to(DTYPE)
    v_cache = torch.randn(B, HKV, Lmax, D, device=DEVICE).to(DTYPE)
    k_new = torch.randn(B, HKV, D, device=DEVICE).to(DTYPE)
    v_new = torch.randn(B, HKV, D, device=DEVICE).to(DTYPE)
    lens = torch.full((B,), n, dtype=torch.int32, device=DEVICE)
    call = lambda: ops.decode_attention(q, k_cache, v_cache, lens, gate, k_new=k_new, v_new=v_new,  # noqa: E731
                                        backend=backend)
    with torch.no_grad():
        call()
        synchronize(DEVICE)
        out = benchmark(call)
    assert out.shape == q.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 8])
def test_attention_prologue(benchmark, backend, B):
    """q/k RMSNorm + partial rotary (64 of 256) + the K/V write of one decode token (Lmax = 4096)."""
    skip_unavailable(backend, DEVICE)
    label(benchmark, op="attention_prologue", shape=f"B={B} Hq={HQ} Hkv={HKV} D={D} R=64 Lmax=4096",
          backend=backend, device=DEVICE, dtype=DTYPE)
    q = torch.randn(B, HQ, 2 * D, device=DEVICE).to(DTYPE)  # the gated q_proj layout [q | gate] per head
    k = torch.randn(B, HKV, D, device=DEVICE).to(DTYPE)
    v = torch.randn(B, HKV, D, device=DEVICE).to(DTYPE)
    wq, wk = (0.1 * torch.randn(D, device=DEVICE)).to(DTYPE), (0.1 * torch.randn(D, device=DEVICE)).to(DTYPE)
    angle = torch.rand(B, 64, device=DEVICE)
    cos, sin = angle.cos().to(DTYPE), angle.sin().to(DTYPE)
    k_cache = torch.zeros(B, HKV, 4096, D, device=DEVICE, dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    lens = torch.full((B,), 1024, dtype=torch.int32, device=DEVICE)
    call = lambda: ops.attention_prologue(q, k, v, wq, wk, cos, sin, 1e-6, k_cache=k_cache,  # noqa: E731
                                          v_cache=v_cache, cache_lens=lens, backend=backend)
    with torch.no_grad():
        call()
        synchronize(DEVICE)
        q_out, k_out = benchmark(call)
    assert q_out.shape == (B, HQ, D) and k_out.shape == (B, HKV, D) and torch.isfinite(q_out.float()).all()
