"""The "attention" family (patching/attention.py): the full-attention layer's static decode step in two
ops (attention_prologue + decode_attention), the layer's own forward everywhere else.

* one layer, one decode step on a `StaticDecodeCache` with a left-padding mask: the patched forward vs
  the layer's own forward (transformers' code over the whole static K/V under the same mask) on a
  copy of the same cache — output and the written K/V (fp32: rms 1e-5, max 1e-4; bf16: rms 1e-2,
  max 6e-2 on outputs of magnitude ~0.1-1), torch and Triton backends;
* greedy generate() of every family, batch 3 with left padding: tokens identical to the unpatched
  model, and the two ops really ran in the decode phase; a transformers-loop generate (DynamicCache)
  and the prefill run the layer's own forward (the ops are not called);
* the report, a skipped non-gated layer with its reason, unpatch.
"""
import copy
import importlib.util

import pytest
import torch

from interns2_fast import patch, unpatch
from interns2_fast.decode.static_cache import StaticDecodeCache, read_cache_states
from interns2_fast.decode.step import DecodeStep, find_parts
from interns2_fast.patching.caches import cache_protocol
from interns2_fast.patching.state import get_state, record_ops
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

FAMILIES = ("qwen3_5_moe", "qwen3_next", "qwen3_5", "interns2_remote")
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 6e-2)}
ATTN_OPS = ("attention_prologue", "decode_attention")


def padded_prompts(model, batch=3, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in zip(range(1, batch), (3, 1)):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def attention_layers(model):
    return [(i, layer.self_attn) for i, layer in enumerate(find_parts(model).layers)
            if getattr(layer, "self_attn", None) is not None]


def static_setup(model, ids, mask):
    """A DecodeStep after the prefill of `ids` (as generate() sets it up), its mask opened at the position."""
    parts = find_parts(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    states = read_cache_states(cache, parts.kinds)
    B, T = ids.shape
    sc = StaticDecodeCache(states, B, 64, torch.zeros(1, dtype=torch.long), cache_protocol(cache))
    step = DecodeStep(parts, sc, vocab_size=model.config.vocab_size, dtype=parts.embed.weight.dtype,
                      device=torch.device("cpu"))
    step.load(states, T, mask, (mask.long().cumsum(-1) - 1)[:, -1:] + 1)
    step.mask.index_fill_(-1, sc.position, 0.0)
    return parts, step


def _call(attn, hidden, pe, mask, cache):
    import inspect

    params = inspect.signature(type(attn).forward).parameters
    kw = {"cache" if "cache" in params else "past_key_values": cache}
    if "cache_position" in params:
        kw["cache_position"] = cache.position
    return attn(hidden_states=hidden, position_embeddings=pe, attention_mask=mask, **kw)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next"])
def test_layer_decode_step_matches_the_layers_own_forward(model_factory, family, dtype, backend):
    model = model_factory(family, dtype)
    ids, mask = padded_prompts(model)
    parts, step = static_setup(model, ids, mask)
    i, attn = attention_layers(model)[0]
    B = ids.shape[0]
    hidden = torch.randn(B, 1, model.config.hidden_size).to(dtype)
    pe = parts.rotary(hidden, step.position_ids)
    theirs = copy.deepcopy(step.cache)
    with torch.no_grad():
        want = _call(attn, hidden, pe, step.mask, theirs)  # unpatched: transformers' attention
        patch(model, ops=("attention",), backend=backend)
        assert get_state(attn) is not None
        with record_ops() as calls:
            got = _call(attn, hidden, pe, step.mask, step.cache)
    assert {op for op, _ in calls} == set(ATTN_OPS), "the patched decode path did not run"
    assert got.shape == want.shape and got.dtype == want.dtype
    tolerance.assert_close(got, want, *TOL[dtype], "layer output vs transformers")
    p = int(step.cache.position)
    for ours, ref in ((step.cache.key_cache[i], theirs.key_cache[i]), (step.cache.value_cache[i], theirs.value_cache[i])):
        assert torch.equal(ours[:, :, :p], ref[:, :, :p]) and torch.equal(ours[:, :, p + 1:], ref[:, :, p + 1:])
        tolerance.assert_close(ours[:, :, p], ref[:, :, p], *TOL[dtype], "written K/V")
    # the mask matters: without it the padded rows differ (so the test can tell a dropped mask)
    with torch.no_grad():
        unmasked = _call(attn, hidden, pe, torch.zeros_like(step.mask), copy.deepcopy(theirs))
    assert not torch.allclose(unmasked[1:].float(), want[1:].float(), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_left_padded_batch_identical_and_ops_ran(model_factory, family, backend):
    model = model_factory(family)
    ids, mask = padded_prompts(model)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False)
    reference = model.generate(ids, **kw)
    report = patch(model, backend=backend)
    n_attn = len(attention_layers(model))
    assert report.counts()["attention"] == n_attn and n_attn > 0
    with record_ops() as calls:
        static = model.generate(ids, **kw)
    assert torch.equal(static, reference)
    assert {(op, ph) for op, ph in calls if op in ATTN_OPS} == {(op, "decode") for op in ATTN_OPS}
    # transformers' own loop (a DynamicCache) and the prefill keep the layer's own attention
    patch(model, backend=backend, static_decode=False)
    with record_ops() as calls:
        loop = model.generate(ids, **kw)
    assert torch.equal(loop, reference)
    assert not [k for k in calls if k[0] in ATTN_OPS]


def test_report_skip_and_unpatch(model_factory):
    model = model_factory("qwen3_5_moe")
    (i, attn), = attention_layers(model)[:1]
    original = type(attn).forward
    report = patch(model, ops=("attention",))
    assert report.counts() == {"attention": len(attention_layers(model))} and report.skipped == []
    assert "| attention |" in report.to_markdown()
    assert unpatch(model) == len(attention_layers(model)) and get_state(attn) is None
    assert attn.forward.__func__ is original
    # a layer without the gated q_proj layout is reported, not patched
    odd = copy.deepcopy(model)
    a = attention_layers(odd)[0][1]
    a.q_proj = torch.nn.Linear(a.q_proj.in_features, a.q_proj.out_features // 2, bias=False)
    report = patch(odd, ops=("attention",))
    assert [(s.op, "gated layout" in s.reason) for s in report.skipped] == [("attention", True)]
    unpatch(odd)
