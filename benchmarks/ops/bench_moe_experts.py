"""MoE experts (gate_up GEMM -> SwiGLU -> down GEMM -> weighted combine) at Intern-S2 shapes:
E = 256 experts, top-8, H = 2048, I = 512; T tokens in {1, 8, 512, 4096} (QUICK: {1, 8, 512}).

    .venv/bin/pytest benchmarks/ops/bench_moe_experts.py --benchmark-only -p no:xdist
    INTERNS2_BENCH_QUICK=1 .venv/bin/pytest benchmarks/ops/bench_moe_experts.py --benchmark-only -p no:xdist

Backends: reference (transformers' eager loop over hit experts), torch, triton (CUDA/NPU only),
and on CUDA transformers' `grouped_mm` experts implementation ("hf_grouped_mm") when it imports.
fp32 on the CPU, bf16 elsewhere. Routing is random top-8 of 256 (each token 8 distinct experts),
weights renormalised; the same inputs for every backend of a shape.
"""
from __future__ import annotations

import os

import pytest
import torch

from interns2_fast import ops
from interns2_fast.bench import label, select_device, select_dtype, skip_unavailable, synchronize

QUICK = os.environ.get("INTERNS2_BENCH_QUICK") == "1"

E, K, H, I = 256, 8, 2048, 512
TOKENS = [1, 8, 512] if QUICK else [1, 8, 512, 4096]
BACKENDS = ["reference", "torch", "triton", "hf_grouped_mm"]


DEVICE = select_device()
DTYPE = select_dtype(DEVICE)
_WEIGHTS: dict = {}


def _weights():
    if "w" not in _WEIGHTS:
        g = torch.Generator(device="cpu").manual_seed(0)
        gu = (torch.randn(E, 2 * I, H, generator=g) * H ** -0.5).to(DEVICE, DTYPE)
        dn = (torch.randn(E, H, I, generator=g) * I ** -0.5).to(DEVICE, DTYPE)
        _WEIGHTS["w"] = (gu, dn)
    return _WEIGHTS["w"]


def _inputs(T):
    g = torch.Generator(device="cpu").manual_seed(T)
    hidden = torch.randn(T, H, generator=g).to(DEVICE, DTYPE)
    ids = torch.rand(T, E, generator=g).argsort(dim=-1)[:, :K].to(DEVICE)
    w = torch.rand(T, K, generator=g) + 0.05
    w = (w / w.sum(-1, keepdim=True)).to(DEVICE)
    return hidden, ids, w



def _hf_grouped_mm():
    """transformers' grouped_mm experts implementation bound to a stand-in experts module."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    fn = ALL_EXPERTS_FUNCTIONS["grouped_mm"]
    gu, dn = _weights()
    mod = torch.nn.Module()
    for name, value in dict(num_experts=E, has_bias=False, is_transposed=False, has_gate=True,
                            has_post_expert_norm=False, is_concatenated=True, _is_expert_parallel=False).items():
        object.__setattr__(mod, name, value)
    object.__setattr__(mod, "gate_up_proj", gu)
    object.__setattr__(mod, "down_proj", dn)
    from transformers.activations import ACT2FN

    object.__setattr__(mod, "act_fn", ACT2FN["silu"])

    def apply_gate(x):
        g, u = x.chunk(2, dim=-1)
        return mod.act_fn(g) * u

    object.__setattr__(mod, "_apply_gate", apply_gate)
    return lambda h, i, w: fn(mod, h, i, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", TOKENS)
def test_moe_experts(benchmark, backend, T):
    skip_unavailable(backend, DEVICE)
    if backend == "hf_grouped_mm" and DEVICE.type != "cuda":
        pytest.skip("hf_grouped_mm: CUDA only (torch's CPU grouped_mm is a naive kernel)")
    shape = f"T={T} E={E} k={K} H={H} I={I}"
    label(benchmark, op="moe_experts", shape=shape, backend=backend, device=DEVICE, dtype=DTYPE)
    gu, dn = _weights()
    hidden, ids, w = _inputs(T)
    if backend == "hf_grouped_mm":
        try:
            impl = _hf_grouped_mm()
            impl(hidden, ids, w.to(DTYPE))
        except Exception as exc:  # noqa: BLE001 - not available on this torch / transformers
            pytest.skip(f"hf_grouped_mm unavailable: {exc}")
        run = lambda: impl(hidden, ids, w.to(DTYPE))  # noqa: E731
    else:
        run = lambda: ops.moe_experts(hidden, ids, w, gu, dn, backend=backend)  # noqa: E731
    # The CPU is shared and noisy: many rounds where a call is cheap, few where it takes seconds.
    rounds = (2 if T >= 4096 else 3 if T >= 512 else 10 if T >= 8 else 30) if DEVICE.type == "cpu" else 20
    run()
    synchronize(DEVICE)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


SHARED_TOKENS = [1, 8] if QUICK else [1, 8, 512]
_SHARED: dict = {}


def _shared_weights():
    if "w" not in _SHARED:
        g = torch.Generator(device="cpu").manual_seed(1)
        r = lambda *s: (torch.randn(*s, generator=g) * s[-1] ** -0.5).to(DEVICE, DTYPE)  # noqa: E731
        _SHARED["w"] = (r(I, H), r(I, H), r(H, I), r(1, H), r(E, H))  # shared gate/up/down, gate, router
    return _SHARED["w"]


@pytest.mark.parametrize("op", ["moe_experts_shared", "moe_sparse_block"])
@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("T", SHARED_TOKENS)
def test_moe_experts_shared(benchmark, op, backend, T):
    """moe_experts_shared (routed experts + the gated shared expert, IS = I = 512) and moe_sparse_block
    (the same after the router, in one op) at Intern-S2 shapes."""
    skip_unavailable(backend, DEVICE)
    label(benchmark, op=op, shape=f"T={T} E={E} k={K} H={H} I=IS={I}", backend=backend, device=DEVICE, dtype=DTYPE)
    gu, dn = _weights()
    sg, su, sd, sgate, router = _shared_weights()
    hidden, ids, w = _inputs(T)
    if op == "moe_experts_shared":
        run = lambda: ops.moe_experts_shared(hidden, ids, w, gu, dn, sg, su, sd, sgate, backend=backend)  # noqa: E731
    else:
        run = lambda: ops.moe_sparse_block(hidden, router, K, True, gu, dn, sg, su, sd, sgate,  # noqa: E731
                                           backend=backend)
    rounds = (3 if T >= 512 else 10) if DEVICE.type == "cpu" else 20
    run()
    synchronize(DEVICE)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
