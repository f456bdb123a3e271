"""The "rmsnorm" family: decoder layers with each residual add fused into the (1 + w) RMSNorm after
it (`patching/decoder.py`), against the unpatched model, every model family.

| check                                      | fp32                         | bf16                      |
|--------------------------------------------|------------------------------|---------------------------|
| logits, torch / triton backend             | max abs <= 1e-5              | RMS ratio <= 2e-2 vs bf16 reference |
| greedy ids (prefill + decode)              | identical                    | -                         |
| add_rms_norm calls per forward             | 2 L + 1 (L layers), no layer norm module called | -      |

plus: the hand-over to the next norm is dropped (correctly) when something between the layers
replaces the tensor; a w-scaled (Llama-style) norm is not taken for a (1 + w) one; decode has no
host sync events. Runs on whichever transformers is installed (CI: 5.2.0 and the newest).
"""
import importlib.util

import pytest
import torch
from torch import nn

from interns2_fast import numerics, ops
from interns2_fast.patching import decoder, patch, reference_mode, unpatch

FAMILIES = ("qwen3_5_moe", "qwen3_next", "qwen3_5", "interns2_remote")
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _count_calls(monkeypatch):
    calls = []
    real = ops.add_rms_norm

    def counted(*args, **kwargs):
        calls.append(args[1] is None)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "add_rms_norm", counted)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_greedy_match_reference(model_factory, family, monkeypatch):
    model = model_factory(family)
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        ref = model(ids).logits
        g_ref = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
        report = patch(model, ops=("rmsnorm",), backend="torch")
        assert report.counts() == {"rmsnorm": L + 1} and report.skipped == []
        assert {p.path for p in report.patched} == {f"model.layers.{i}" for i in range(L)} | {"model.norm"}
        norm_calls = []
        # (the final norm module is still called: its patched forward returns the handed-over value)
        norms = [getattr(layer, n) for layer in model.model.layers
                                      for n in ("input_layernorm", "post_attention_layernorm")]
        hooks = [m.register_forward_hook(lambda *a: norm_calls.append(1)) for m in norms]
        calls = _count_calls(monkeypatch)
        out = model(ids).logits
        assert len(calls) == 2 * L + 1 and sum(calls) == 1, "one plain norm (layer 0), then add + norm pairs"
        assert norm_calls == [], "no decoder norm module runs: every norm is an add_rms_norm call"
        for h in hooks:
            h.remove()
        g = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(g, g_ref)


@pytest.mark.skipif(not _HAS_TRITON, reason="triton missing")
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_triton_backend_with_every_family_op(model_factory):
    model = model_factory("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        ref = model(ids).logits
        g_ref = model.generate(ids, max_new_tokens=4, do_sample=False)
        patch(model, ops=("rmsnorm", "moe"), backend="triton")
        out = model(ids).logits
        g = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert (out - ref).abs().max().item() <= 1e-4
    assert torch.equal(g, g_ref)


def test_bf16_close_to_reference(model_factory, ph):
    model = model_factory("qwen3_5_moe", torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    with torch.no_grad():
        ref = model(ids).logits.float()
        patch(model, ops=("rmsnorm",), backend="torch")
        out = model(ids).logits.float()
    assert ph.rms_ratio(out, ref) <= 2e-2


def test_broken_hand_over_falls_back_to_the_norm(model_factory, monkeypatch):
    """A forward hook that replaces layer 1's output: layer 2 must compute its own input norm."""
    model = model_factory("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 7))
    handle = model.model.layers[1].register_forward_hook(lambda mod, args, out: out * 1.0)
    try:
        with torch.no_grad():
            ref = model(ids).logits
            patch(model, ops=("rmsnorm",), backend="torch")
            calls = _count_calls(monkeypatch)
            out = model(ids).logits
    finally:
        handle.remove()
    assert sum(calls) == 2, "layer 0 and layer 2 (after the hook) run a plain norm"
    assert (out - ref).abs().max().item() <= 1e-5


def test_hand_over_is_taken_once_and_only_for_that_tensor():
    chain = decoder.NormChain()
    out, normed = torch.randn(3), torch.randn(3)
    chain.put(out, normed)
    assert chain.take(out.clone()) is None  # another tensor (and the slot is now empty)
    chain.put(out, normed)
    assert chain.take(out) is normed and chain.take(out) is None
    chain.put(out, normed)
    out.add_(1.0)  # changed in place after the hand-over
    assert chain.take(out) is None


class _WScaledNorm(nn.Module):
    """Llama-style RMSNorm (w, not 1 + w): same attributes, different arithmetic."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


def test_w_scaled_norm_is_skipped_with_reason(model_factory):
    model = model_factory("qwen3_5_moe")
    layer = model.model.layers[2]
    original = layer.input_layernorm
    layer.input_layernorm = _WScaledNorm(model.config.hidden_size)
    try:
        ids = torch.randint(0, model.config.vocab_size, (1, 7))
        with torch.no_grad():
            ref = model(ids).logits
            report = patch(model, ops=("rmsnorm",), backend="torch")
            out = model(ids).logits
        assert [(s.path, s.op) for s in report.skipped] == [("model.layers.2", "rmsnorm")]
        assert "(1 + w)" in report.skipped[0].reason
        assert (out - ref).abs().max().item() <= 1e-5
    finally:
        unpatch(model)
        layer.input_layernorm = original


def test_decode_step_adds_no_host_sync(model_factory):
    """A whole-model decode step: the rmsnorm family adds no sync event to what the model already has."""
    model = model_factory("qwen3_5_moe")
    patch(model, ops=("rmsnorm",), backend="torch")
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    counts = {}
    with torch.no_grad():
        for name, ctx in (("reference", reference_mode(model)), ("patched", torch.no_grad())):
            with ctx:
                out = model(ids, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                counts[name], _ = numerics.count_host_syncs(
                    lambda: model(nxt, past_key_values=out.past_key_values, use_cache=True))
    assert counts["patched"] == counts["reference"]
