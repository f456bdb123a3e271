"""patch(model) (all op families: gdn, conv, norm, moe, rmsnorm) against the unpatched model, every model family.

Runs on whichever transformers is installed (CI runs 5.2.0 and the newest release).

| check                        | fp32                          | bf16                 |
|------------------------------|-------------------------------|----------------------|
| logits, RMS ratio            | <= 1e-4                       | vs the fp32 model: <= 1.25 x the bf16 reference's + 0.01; vs the bf16 reference <= 6e-2 |
| logits, max abs              | <= 1e-3                       | -                    |
| greedy ids (prefill+decode)  | identical                     | -                    |
| cache states (conv, recur.)  | RMS ratio <= 1e-4, max <= 1e-4| -                    |
"""
import pytest
import torch

from interns2_fast import models, ops
from interns2_fast.patching import patch, reference_mode, unpatch

FAMILIES = models.FAMILIES
ALL_OPS = ("gdn", "conv", "norm", "moe", "rmsnorm")
GDN_OPS = ("gdn", "conv", "norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_reference(model_factory, ph, family, dtype):
    model = model_factory(family, dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 70))  # two chunks of 64
    with torch.no_grad():
        ref = model(ids).logits.float()
        report = patch(model)
        out = model(ids).logits.float()
        anchor = model_factory(family, torch.float32)(ids).logits if dtype != torch.float32 else None
    n_lin = len(ph.linear_layer_ids(model))
    # rmsnorm: every decoder layer and the final norm
    want = {"gdn": n_lin, "conv": n_lin, "norm": n_lin, "rmsnorm": model.config.num_hidden_layers + 1,
            "attention": model.config.num_hidden_layers - n_lin}
    if family != "qwen3_5":  # router + block per MoE layer
        want["moe"] = 2 * model.config.num_hidden_layers
    assert report.counts() == want, report.summary()
    assert report.skipped == []
    if dtype == torch.float32:
        assert ph.rms_ratio(out, ref) <= 1e-4
        assert (out - ref).abs().max().item() <= 1e-3
    else:
        # bf16: the patched model is as close to the fp32 model as the bf16 reference is
        assert ph.rms_ratio(out, anchor) <= 1.25 * ph.rms_ratio(ref, anchor) + 0.01
        assert ph.rms_ratio(out, ref) <= 6e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_and_cache_continuity(model_factory, ph, family):
    """Prefill with cache, decode, then a second generate() that continues the conversation."""
    model = model_factory(family)
    lin = ph.linear_layer_ids(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, 9))
    follow_up = torch.randint(0, model.config.vocab_size, (1, 5))
    gen = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    patch(model)
    runs = {}
    for name, ctx in (("reference", reference_mode(model)), ("patched", torch.no_grad())):
        with ctx, torch.no_grad():
            first = model.generate(prompt, **gen)
            states_first = [(c.clone(), r.clone()) for c, r in ph.linear_states(first.past_key_values, lin)]
            second = model.generate(torch.cat([first.sequences, follow_up], 1), past_key_values=first.past_key_values,
                                    **gen)
            runs[name] = (first.sequences, states_first, second.sequences,
                          ph.linear_states(second.past_key_values, lin))
    ref, got = runs["reference"], runs["patched"]
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])
    from interns2_fast.patching.state import get_state

    # the patched path ran with the cache (an unknown cache protocol would hand calls back to transformers)
    unknown = {name: get_state(m).extra["unknown_cache"] for name, m in model.named_modules()
               if get_state(m) is not None and "unknown_cache" in get_state(m).extra}
    assert unknown == {}, unknown
    for states_ref, states_got in ((ref[1], got[1]), (ref[3], got[3])):
        for (c_ref, r_ref), (c_got, r_got) in zip(states_ref, states_got):
            assert c_got.shape == c_ref.shape and r_got.shape == r_ref.shape
            assert (c_got - c_ref).abs().max().item() <= 1e-4
            assert ph.rms_ratio(r_got, r_ref) <= 1e-4 and (r_got - r_ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_batch(model_factory, family):
    model = model_factory(family)
    V = model.config.vocab_size
    ids = torch.randint(1, V, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :2] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref_logits = model(ids, attention_mask=mask).logits
        ref = model.generate(ids, **kw)
        patch(model)
        out_logits = model(ids, attention_mask=mask).logits
        out = model.generate(ids, **kw)
    keep = mask.bool()
    assert (out_logits[keep] - ref_logits[keep]).abs().max().item() <= 1e-3
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_unpatch_is_bit_exact_and_patch_is_idempotent(model_factory, family):
    model = model_factory(family)
    ids = torch.randint(0, model.config.vocab_size, (1, 11))
    with torch.no_grad():
        before = model(ids).logits
        first = patch(model)
        once = model(ids).logits
        second = patch(model)
        twice = model(ids).logits
        assert [(p.path, p.op) for p in second.patched] == [(p.path, p.op) for p in first.patched]
        assert torch.equal(once, twice)
        narrowed = patch(model, ops=("moe",))  # a later call describes the whole patch
        assert {p.op for p in narrowed.patched} == ({"moe"} if family != "qwen3_5" else set())
        assert "forward" not in model.model.layers[0].linear_attn.__dict__
        second = patch(model)
        assert unpatch(model) == len({p.path for p in first.patched})
        after = model(ids).logits
    assert torch.equal(after, before)
    assert not any(k == "_interns2_fast" for m in model.modules() for k in m.__dict__)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_other_models_untouched(model_factory):
    a = model_factory("qwen3_5_moe")
    b = models.build_causal_lm("qwen3_5_moe")
    patch(a)
    assert all("forward" not in m.__dict__ for m in b.modules())
    la = a.model.layers[0].linear_attn
    assert "forward" in la.__dict__ and type(la).forward is type(b.model.layers[0].linear_attn).forward


def _triton_families():
    """Op families whose Triton backends are registered and whose kernel modules exist."""
    import importlib.util

    need = {"gdn": (("chunk_gated_delta_rule", "gdn_chunk"), ("fused_recurrent_gated_delta_rule_with_gating", "gdn_recurrent"),
                    ("gdn_gating", "gdn_gating")),
            "conv": (("causal_conv1d_fn", "conv1d"), ("causal_conv1d_update", "conv1d")),
            "norm": (("rms_norm_gated", "norm_gated"),),
            "moe": (("moe_route", "moe_routing"), ("moe_experts", "moe_experts"))}
    return tuple(f for f, pairs in need.items()
                 if all("triton" in ops.registered(op) and importlib.util.find_spec(f"interns2_fast.kernels.{mod}")
                        for op, mod in pairs))


@pytest.mark.skipif(not _triton_families(), reason="no complete Triton backend family yet")
def test_triton_backend_under_interpreter_smallest(ph):
    """backend="triton" through the whole patched model (interpreter; 1 linear + 1 full-attention layer,
    6 prompt tokens + 2 decode steps), for every family whose Triton kernels exist."""
    cfg = models.tiny_config("qwen3_5_moe", num_layers=2)
    cfg.layer_types = ["linear_attention", "full_attention"]
    model = models.build_causal_lm("qwen3_5_moe", cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    fams = _triton_families()
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
        report = patch(model, ops=fams, backend="triton")
        assert {p.op for p in report.patched if p.backend == "triton"} == set(fams)
        out = model.generate(ids, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert ph.rms_ratio(a, b) <= 1e-3


@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next"])
@pytest.mark.parametrize("verify", [False, True])
def test_output_router_logits(model_factory, family, verify):
    model = model_factory(family)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        ref = model(ids, output_router_logits=True)
        patch(model, verify=verify)
        out = model(ids, output_router_logits=True)
    assert len(out.router_logits) == len(ref.router_logits) == model.config.num_hidden_layers
    for a, b in zip(out.router_logits, ref.router_logits):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a.float() - b.float()).abs().max().item() <= 1e-5
    assert torch.allclose(out.aux_loss, ref.aux_loss, rtol=1e-5)


def test_ops_subset_and_report_content(model_factory):
    model = model_factory("qwen3_5_moe")
    report = patch(model, ops=("moe",), backend="reference")
    assert {p.op for p in report.patched} == {"moe"} and {p.backend for p in report.patched} == {"reference"}
    paths = {p.path for p in report.patched}
    assert "model.layers.0.mlp" in paths and "model.layers.0.mlp.gate" in paths
    assert "model.layers.0.linear_attn" not in paths
    md = report.to_markdown()
    assert "| `model.layers.0.mlp` | moe | reference |" in md and "skipped 0" in md
    with pytest.raises(ValueError, match="unknown op families"):
        patch(model, ops=("flash_attention",))


def test_skipped_candidates_are_reported_with_reason():
    model = models.build_causal_lm("qwen3_5_moe")
    model.model.layers[0].linear_attn.activation = "gelu"
    model.model.layers[1].mlp.experts.act_fn = torch.nn.GELU()
    report = patch(model)
    skipped = {(s.path, s.op): s.reason for s in report.skipped}
    assert "activation 'gelu'" in skipped[("model.layers.0.linear_attn", "gdn")]
    assert ("model.layers.0.linear_attn", "conv") in skipped
    assert "GELU" in skipped[("model.layers.1.mlp", "moe")]
    assert "model.layers.0.linear_attn" not in {p.path for p in report.patched}
    assert "model.layers.0.linear_attn.norm" in {p.path for p in report.patched}
    assert "skipped" in report.to_markdown()


@pytest.mark.parametrize("family", ["qwen3_5_moe", "interns2_remote"])
def test_multi_token_continuation_of_a_cached_conversation(model_factory, family):
    """A second multi-token call on a cache: 5.2 restarts the linear-attention state (reproduced by default);
    fix_legacy_continuation=True continues it, equal to the whole conversation without cache."""
    model = model_factory(family)
    a = torch.randint(0, model.config.vocab_size, (1, 9))
    b = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        pkv = model(a[:, :2], use_cache=True).past_key_values
        # 5.2's cache (lists conv_states / recurrent_states); 5.13-5.15 and later keep per-layer objects
        legacy = hasattr(pkv, "conv_states") and not hasattr(pkv, "get_conv_state")

    def continuation():
        cache = model(a, use_cache=True).past_key_values
        kw = {"cache_position": torch.arange(9, 14)} if legacy else {}
        return model(b, past_key_values=cache, use_cache=True, **kw).logits

    with torch.no_grad():
        full = model(torch.cat([a, b], 1)).logits[:, 9:]
        ref = continuation()
        patch(model)
        faithful = continuation()
        patch(model, fix_legacy_continuation=True)
        fixed = continuation()
    assert (faithful - ref).abs().max().item() <= 1e-4
    assert (fixed - full).abs().max().item() <= 1e-4
    assert ((ref - full).abs().max().item() > 1e-2) == legacy
