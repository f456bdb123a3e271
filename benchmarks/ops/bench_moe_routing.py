"""MoE routing at Intern-S2 shapes: E = 256 experts, top-8, H = 2048.

    .venv/bin/pytest benchmarks/ops/bench_moe_routing.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_moe_routing.py --benchmark-only -p no:xdist

* `moe_route` — router logits, fp32 softmax, top-8, renormalise; T in {1, 4096} (QUICK {1, 512}).
  Backends: reference (interns2_fast.reference.moe_route: it computes the raw logits with one
  F.linear and then runs the installed transformers router's forward, which does its own F.linear,
  so two GEMMs), "hf_router" (the transformers router forward alone: one GEMM; the fair baseline
  for the GEMM-bound large-T case), torch, triton (CUDA/NPU only).
* `moe_route+align` — the router plus the routing plan (`moe_align`, block size 64) that the grouped
  expert GEMMs consume. The reference backend has no plan (its eager expert loop syncs with
  `nonzero` instead); its row in this group is the router plus that host-synced loop's own
  bookkeeping (one-hot mask + nonzero per hit expert), so the ratio is what replacing one with the
  other buys.
fp32 on the CPU, bf16 elsewhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

E, K, H = 256, 8, 2048
BLOCK_SIZE = 64
TOKENS = [1, 512] if QUICK else [1, 4096]
BACKENDS = ["reference", "torch", "triton"]
ROUTE_BACKENDS = ["reference", "hf_router", "torch", "triton"]


DEVICE = select_device()
DTYPE = select_dtype(DEVICE)



def _inputs(T):
    g = torch.Generator(device="cpu").manual_seed(T)
    hidden = torch.randn(T, H, generator=g).to(DEVICE, DTYPE)
    weight = (torch.randn(E, H, generator=g) * H**-0.5).to(DEVICE, DTYPE)
    return hidden, weight



def _label(benchmark, op, T, backend):
    shape = f"T={T} E={E} k={K} H={H}" + (f" bs={BLOCK_SIZE}" if "align" in op else "")
    label(benchmark, op=op, shape=shape, backend=backend, device=DEVICE, dtype=DTYPE)


def _run(benchmark, fn, T):
    fn()
    synchronize(DEVICE)
    rounds = 5 if (DEVICE.type == "cpu" and T >= 512) else 50
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _hf_router(weight):
    """The installed transformers router module's forward on our weight (one F.linear)."""
    from interns2_fast.reference import _stand_in, fallback_module

    cls = fallback_module().Qwen3_5MoeTopKRouter
    router = _stand_in(cls, weight=weight, top_k=K, num_experts=E, hidden_dim=H)
    return lambda h: cls.forward(router, h)


@pytest.mark.parametrize("backend", ROUTE_BACKENDS)
@pytest.mark.parametrize("T", TOKENS)
def test_moe_route(benchmark, backend, T):
    skip_unavailable(backend, DEVICE)
    _label(benchmark, "moe_route", T, backend)
    hidden, weight = _inputs(T)
    if backend == "hf_router":
        fwd = _hf_router(weight)
        _run(benchmark, lambda: fwd(hidden), T)
        return
    _run(benchmark, lambda: ops.moe_route(hidden, weight, K, backend=backend), T)


def _reference_bookkeeping(ids):
    """What transformers' eager expert loop does before its GEMMs: a one-hot expert mask and a
    host-synced list of hit experts, then a nonzero per hit expert."""
    mask = torch.nn.functional.one_hot(ids, num_classes=E).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    out = []
    for e in hit:
        out.append(torch.where(mask[e[0]]))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", TOKENS)
def test_moe_route_align(benchmark, backend, T):
    skip_unavailable(backend, DEVICE)
    _label(benchmark, "moe_route+align", T, backend)
    hidden, weight = _inputs(T)
    if backend == "reference":
        def fn():
            _, _, ids = ops.moe_route(hidden, weight, K, backend="reference")
            return _reference_bookkeeping(ids)
    else:
        def fn():
            _, _, ids = ops.moe_route(hidden, weight, K, backend=backend)
            return ops.moe_align(ids, E, BLOCK_SIZE, backend=backend)
    _run(benchmark, fn, T)
