"""Patched linear-attention layers (GDN + conv + gated norm) against the unpatched model, every family.

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
GDN_OPS = ("gdn", "conv", "norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_reference(model_factory, ph, family, dtype):
    model = model_factory(family, dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 70))  # two chunks of 64
    with torch.no_grad():
        ref = model(ids).logits.float()
        report = patch(model, ops=GDN_OPS)
        out = model(ids).logits.float()
        anchor = model_factory(family, torch.float32)(ids).logits if dtype != torch.float32 else None
    n_lin = len(ph.linear_layer_ids(model))
    assert report.counts() == {"gdn": n_lin, "conv": n_lin, "norm": n_lin}, report.summary()
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
    patch(model, ops=GDN_OPS)
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
        patch(model, ops=GDN_OPS)
        out_logits = model(ids, attention_mask=mask).logits
        out = model.generate(ids, **kw)
    keep = mask.bool()
    assert (out_logits[keep] - ref_logits[keep]).abs().max().item() <= 1e-3
    assert torch.equal(out, ref)


def test_unpatch_is_bit_exact_and_patch_is_idempotent(model_factory):
    model = model_factory("qwen3_5_moe")
    ids = torch.randint(0, model.config.vocab_size, (1, 11))
    with torch.no_grad():
        before = model(ids).logits
        first = patch(model, ops=GDN_OPS)
        once = model(ids).logits
        second = patch(model, ops=GDN_OPS)
        twice = model(ids).logits
        assert [(p.path, p.op) for p in second.patched] == [(p.path, p.op) for p in first.patched]
        assert torch.equal(once, twice)
        assert unpatch(model) == len({p.path for p in first.patched})
        after = model(ids).logits
    assert torch.equal(after, before)
    assert not any(k == "_interns2_fast" for m in model.modules() for k in m.__dict__)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_other_models_untouched(model_factory):
    a = model_factory("qwen3_5_moe")
    b = models.build_causal_lm("qwen3_5_moe")
    patch(a, ops=GDN_OPS)
    assert all("forward" not in m.__dict__ for m in b.modules())
    la = a.model.layers[0].linear_attn
    assert "forward" in la.__dict__ and type(la).forward is type(b.model.layers[0].linear_attn).forward


@pytest.mark.skipif("triton" not in ops.registered("chunk_gated_delta_rule"), reason="no Triton GDN backend yet")
def test_triton_backend_under_interpreter_smallest(ph):
    """backend="triton" through the whole patched model (interpreter, 2 layers, 6 tokens + 2 decode steps)."""
    cfg = models.tiny_config("qwen3_5_moe", num_layers=2)
    cfg.layer_types = ["linear_attention", "full_attention"]
    model = models.build_causal_lm("qwen3_5_moe", cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
        report = patch(model, ops=GDN_OPS, backend="triton")
        assert any(p.backend == "triton" for p in report.patched)
        out = model.generate(ids, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert ph.rms_ratio(a, b) <= 1e-3
