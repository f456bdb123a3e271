"""MoE hooks (interns2_fast.patching.moe) vs the installed transformers modules, whatever version
is installed (run with both .venv = 5.2 and /tmp/vnew = 5.24).

Tolerances (rms = rms(out - ref) / rms(ref)):

| dtype | router (all slots)        | block / experts (torch, triton) | backend="reference" |
|-------|---------------------------|----------------------------------|---------------------|
| fp32  | exact (same ops)          | rms 1e-5                         | bit-identical       |
| bf16  | exact (same ops)          | rms 3e-2                         | bit-identical       |
"""
import pytest
import torch

from interns2_fast.patching import moe as hooks

H, E, K, I = 32, 8, 2, 16


def _rms(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def tiny_block(dtype=torch.float32, seed=0):
    from transformers import Qwen3_5MoeTextConfig
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeSparseMoeBlock

    cfg = Qwen3_5MoeTextConfig(hidden_size=H, num_experts=E, num_experts_per_tok=K, moe_intermediate_size=I,
                               shared_expert_intermediate_size=I, num_hidden_layers=1)
    cfg._experts_implementation = "eager"
    block = Qwen3_5MoeSparseMoeBlock(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        block.gate.weight.copy_(torch.randn(E, H, generator=g) * 0.5)  # distinct scores: no ties
        block.experts.gate_up_proj.copy_(torch.randn(E, 2 * I, H, generator=g) * H ** -0.5)
        block.experts.down_proj.copy_(torch.randn(E, H, I, generator=g) * I ** -0.5)
        for lin in (block.shared_expert.gate_proj, block.shared_expert.up_proj, block.shared_expert.down_proj,
                    block.shared_expert_gate):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * lin.weight.shape[1] ** -0.5)
    return block.to(dtype).eval()


DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 7])
def test_router_forward_equals_installed_router(dtype, T):
    block = tiny_block(dtype)
    x = torch.randn(T, H).to(dtype)
    with torch.no_grad():
        want = block.gate(x)
        got = hooks.router_forward(block.gate, x, backend="torch")
    assert len(got) == len(want) == 3
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-7)
    assert torch.equal(got[2], want[2])


def test_router_semantics_probe_matches_behaviour():
    block = tiny_block()
    x = torch.randn(3, H)
    with torch.no_grad():
        first = block.gate(x)[0]
    returns_probs = bool(torch.allclose(first.sum(-1), torch.ones(3)) and (first >= 0).all())
    assert hooks.router_semantics(block.gate) == returns_probs


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,L", [(1, 1), (2, 40)])
def test_sparse_block_forward_equals_installed_block(backend, dtype, B, L):
    if backend == "triton":
        pytest.importorskip("triton")
    block = tiny_block(dtype)
    x = torch.randn(B, L, H).to(dtype)
    with torch.no_grad():
        want = block(x)
        got = hooks.sparse_moe_block_forward(block, x, backend=backend)
    assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
    assert _rms(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_sparse_block_reference_backend_is_bit_identical(dtype):
    block = tiny_block(dtype)
    x = torch.randn(2, 5, H).to(dtype)
    with torch.no_grad():
        assert torch.equal(hooks.sparse_moe_block_forward(block, x, backend="reference"), block(x))


def test_block_backend_from_module_attribute():
    block = tiny_block()
    block.interns2_fast_backend = "reference"
    x = torch.randn(1, 3, H)
    with torch.no_grad():
        assert torch.equal(hooks.sparse_moe_block_forward(block, x), block(x))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_registered_experts_implementation(backend, dtype):
    if backend == "triton":
        pytest.importorskip("triton")
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    assert hooks.register_experts_implementation() == "interns2_fast"
    assert ALL_EXPERTS_FUNCTIONS["interns2_fast"] is hooks.experts_forward
    block = tiny_block(dtype)
    experts = block.experts
    x = torch.randn(40, H).to(dtype)
    with torch.no_grad():
        _, w, ids = block.gate(x)
        want = experts(x, ids, w)  # eager
        experts.config._experts_implementation = "interns2_fast"
        experts.interns2_fast_backend = backend
        try:
            got = experts(x, ids, w)
        finally:
            experts.config._experts_implementation = "eager"
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rms(got, want) <= TOL[dtype]


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_router_forward_qwen3_next_router(norm_topk_prob):
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

    cfg = Qwen3NextConfig(hidden_size=H, num_experts=E, num_experts_per_tok=K, moe_intermediate_size=I,
                          shared_expert_intermediate_size=I, num_hidden_layers=1, norm_topk_prob=norm_topk_prob)
    cfg._experts_implementation = "eager"
    block = Qwen3NextSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        block.gate.weight.copy_(torch.randn(E, H) * 0.5)
        x = torch.randn(5, H)
        want, got = block.gate(x), hooks.router_forward(block.gate, x, backend="torch")
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sparse_block_keeps_router_hooks():
    block = tiny_block()
    seen = []
    handle = block.gate.register_forward_hook(lambda m, args, out: seen.append(out[0]))
    try:
        with torch.no_grad():
            hooks.sparse_moe_block_forward(block, torch.randn(1, 4, H), backend="torch")
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (4, E)


def _router_logits(model, ids):
    with torch.no_grad():
        return model(ids, output_router_logits=True).router_logits


@pytest.mark.parametrize("poison", ["meta", "nan"])
def test_router_semantics_not_poisoned_by_meta_or_uninitialised_weights(monkeypatch, poison):
    """A model whose router weights are on `meta` (init_empty_weights) or never initialised (NaN
    garbage) is patched FIRST; a real model of the same class patched after it must still return
    exactly the unpatched model's router_logits (probabilities on 5.2, logits later)."""
    from accelerate import init_empty_weights

    from interns2_fast import models
    from interns2_fast.patching import patch

    monkeypatch.setattr(hooks, "_ROUTER_RETURNS_PROBS", {})  # as in a fresh process
    cfg = models.tiny_config("qwen3_5_moe")
    cfg._attn_implementation = "eager"
    if poison == "meta":
        with init_empty_weights():
            first = models._causal_lm_class("qwen3_5_moe")(cfg)
        assert first.model.layers[0].mlp.gate.weight.device.type == "meta"
    else:
        first = models._causal_lm_class("qwen3_5_moe")(cfg)
        with torch.no_grad():
            for layer in first.model.layers:
                layer.mlp.gate.weight.fill_(float("nan"))
    patch(first, ops=("moe",))
    model = models.build_causal_lm("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 11))
    want = _router_logits(model, ids)
    report = patch(model, ops=("moe",))
    assert report.counts().get("moe") == 2 * model.config.num_hidden_layers, report.summary()
    got = _router_logits(model, ids)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if poison == "meta":
        assert first.model.layers[0].mlp.gate.weight.device.type == "meta"  # the probe never touched it


def test_router_probe_same_answer_on_meta_twin_and_real_router():
    from accelerate import init_empty_weights

    from transformers import Qwen3_5MoeTextConfig
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeSparseMoeBlock

    cfg = Qwen3_5MoeTextConfig(hidden_size=H, num_experts=E, num_experts_per_tok=K, moe_intermediate_size=I,
                               shared_expert_intermediate_size=I, num_hidden_layers=1)
    with init_empty_weights():
        meta = Qwen3_5MoeSparseMoeBlock(cfg).gate
    real = tiny_block().gate
    x = torch.randn(3, H)
    with torch.no_grad():
        first = real(x)[0]
    returns_probs = bool(torch.allclose(first.sum(-1), torch.ones(3)) and (first >= 0).all())
    assert hooks._probe_router_class(real) is returns_probs
    assert hooks._probe_router_class(meta) is returns_probs
    assert meta.weight.device.type == "meta" and real.weight.abs().sum() > 0  # neither instance was changed


def _ops_called(fn):
    from interns2_fast import ops

    seen = []
    originals = {n: getattr(ops, n) for n in ("moe_sparse_block", "moe_experts_shared", "moe_experts", "moe_route")}

    class spy:
        def __init__(self, name):
            self.name = name

        def __call__(self, *a, **kw):
            seen.append(self.name)
            return originals[self.name](*a, **kw)

    import interns2_fast.patching.moe as m

    try:
        for n in originals:
            setattr(m.ops, n, spy(n))
        out = fn()
    finally:
        for n, f in originals.items():
            setattr(m.ops, n, f)
    return out, seen


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_block_paths_by_what_is_observed(backend, dtype):
    """Plain block: ONE op (moe_sparse_block). A hooked router (output_router_logits): the router
    module call (its hook sees its output) + moe_experts_shared. A hooked shared expert: its module
    call + moe_experts with the gated add. All equal the installed block."""
    if backend == "triton":
        pytest.importorskip("triton")
    block = tiny_block(dtype)
    x = torch.randn(1, 3, H).to(dtype)
    with torch.no_grad():
        want = block(x)
        got, seen = _ops_called(lambda: hooks.sparse_moe_block_forward(block, x, backend=backend))
        assert seen == ["moe_sparse_block"] and _rms(got, want) <= TOL[dtype]
        router_seen = []
        h = block.gate.register_forward_hook(lambda m, a, o: router_seen.append(o))
        try:
            got, seen = _ops_called(lambda: hooks.sparse_moe_block_forward(block, x, backend=backend))
        finally:
            h.remove()
        assert seen == ["moe_experts_shared"] and len(router_seen) == 1 and _rms(got, want) <= TOL[dtype]
        shared_seen = []
        h = block.shared_expert.register_forward_hook(lambda m, a, o: shared_seen.append(o))
        try:
            got, seen = _ops_called(lambda: hooks.sparse_moe_block_forward(block, x, backend=backend))
        finally:
            h.remove()
        assert "moe_experts" in seen and len(shared_seen) == 1 and _rms(got, want) <= TOL[dtype]


def test_shared_expert_weights_by_structure():
    block = tiny_block()
    w = hooks.shared_expert_weights(block)
    assert w is not None and w[0] is block.shared_expert.gate_proj.weight and w[3] is block.shared_expert_gate.weight
    block.shared_expert.down_proj.bias = torch.nn.Parameter(torch.zeros(H))
    assert hooks.shared_expert_weights(block) is None  # a biased Linear is not what the op computes
