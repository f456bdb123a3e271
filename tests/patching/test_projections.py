"""The linear-attention input projections as one GEMM on one weight buffer (patching/projections.py).

Checked per family (qwen3_5_moe, qwen3_5, qwen3_next, the Intern-S2 remote stand-in): greedy tokens
identical to the unpatched model in fp32; the projection weights are adjacent rows of ONE storage and
the model holds no second copy (the bytes of all parameter storages are unchanged); the projection
modules' own forwards no longer run; state_dict keys and values unchanged; unpatch gives every
Parameter (the same objects) its own contiguous storage; deepcopy / pickle / torch.save copies compute
with their own weights; the state dict shows no shared storage (transformers' tied-weights check
passes) and save_pretrained / from_pretrained round-trips; and the cases that must keep separate GEMMs (meta weights, hooks, dtype mismatch,
weights separated after patching) do so with the right result.
"""
import collections
import copy
import re

import pytest
import torch
from torch import nn

import interns2_fast
from interns2_fast import models
from interns2_fast.patching import projections
from interns2_fast.patching.state import patched_states
from tiny_models import round_trip  # noqa: E402  (tests/tiny_models.py)

FAMILIES = models.FAMILIES


def _ids(model, T=6, B=1):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))


def _gdn_states(model):
    return [s for s in patched_states(model) if s.kind == "gdn"]


def _proj_modules(state):
    names = projections.LAYOUT_PROJECTIONS[state.extra["layout"]]
    return [getattr(state.module, n) for n in names]


def _storage_bytes(model) -> int:
    seen = {}
    for p in model.parameters():
        s = p.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _assert_one_buffer(state):
    mods = _proj_modules(state)
    ws = [m.weight for m in mods]
    assert state.extra["projections"] is not None, state.extra.get("projections_note")
    assert len({w.untyped_storage().data_ptr() for w in ws}) == 1
    offsets = [w.storage_offset() for w in ws]
    sizes = [w.numel() for w in ws]
    assert offsets == [offsets[0] + sum(sizes[:i]) for i in range(len(ws))]
    assert ws[0].untyped_storage().nbytes() == sum(sizes) * ws[0].element_size()  # the buffer, nothing more


@pytest.mark.parametrize("family", FAMILIES)
def test_one_buffer_one_gemm_same_tokens(family, model_factory):
    model = model_factory(family)
    ids = _ids(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {n: p for n, p in model.named_parameters()}
    bytes_before = _storage_bytes(model)
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
        want_logits = model(ids).logits
    interns2_fast.patch(model)
    states = _gdn_states(model)
    assert states
    for st in states:
        _assert_one_buffer(st)
    assert _storage_bytes(model) == bytes_before  # the old storages are gone: one copy of the weights
    assert {n: p for n, p in model.named_parameters()}.keys() == params_before.keys()
    assert all(p is params_before[n] for n, p in model.named_parameters())  # the same Parameter objects
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k

    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for st in states for m in _proj_modules(st)]
    try:
        with torch.no_grad():
            got_logits = model(ids).logits
            got = model.generate(ids, max_new_tokens=6, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []  # the projections ran as the one fused GEMM, not through their own forwards
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want)

    n = interns2_fast.unpatch(model)
    assert n > 0
    ptrs = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)  # no storage shared: safetensors can save the model
    for name, p in model.named_parameters():
        assert p is params_before[name]
        assert p.is_contiguous() and p.untyped_storage().nbytes() == p.numel() * p.element_size(), name
        assert torch.equal(p, before[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model.generate(ids, max_new_tokens=6, do_sample=False), want)


def test_fused_projection_outputs_are_views_of_one_result(model_factory):
    model = model_factory("qwen3_5_moe")
    interns2_fast.patch(model)
    st = _gdn_states(model)[0]
    x = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        outs = projections.fused_linear(st.module, st.extra["projections"], x)
        want = [m(x) for m in _proj_modules(st)]
    assert len({o.untyped_storage().data_ptr() for o in outs}) == 1
    for o, w in zip(outs, want):
        torch.testing.assert_close(o, w, atol=1e-6, rtol=1e-6)


def test_repatch_keeps_one_buffer_and_dropping_the_family_unfuses(model_factory):
    model = model_factory("qwen3_5")
    interns2_fast.patch(model)
    st = _gdn_states(model)[0]
    ptr = _proj_modules(st)[0].weight.data_ptr()
    interns2_fast.patch(model)  # a second call: already fused, nothing re-copied
    assert _proj_modules(st)[0].weight.data_ptr() == ptr
    mods = _proj_modules(st)
    interns2_fast.patch(model, ops=("moe",))  # the gdn layers are unpatched: weights separate again
    ptrs = [m.weight.untyped_storage().data_ptr() for m in mods]
    assert len(set(ptrs)) == len(ptrs)


def test_deepcopy_copy_owns_its_buffer(model_factory):
    model = model_factory("qwen3_5_moe")
    interns2_fast.patch(model)
    twin = copy.deepcopy(model)  # Parameters deep-copy by cloning: the copy's first call re-views them
    ids = _ids(model)
    with torch.no_grad():
        twin(ids)
    for a, b in zip(_gdn_states(model), _gdn_states(twin)):
        _assert_one_buffer(b)
        assert _proj_modules(a)[0].weight.data_ptr() != _proj_modules(b)[0].weight.data_ptr()
    with torch.no_grad():
        for st in _gdn_states(twin):
            for m in _proj_modules(st):
                m.weight.mul_(1.5)
    with torch.no_grad():
        got = twin(ids).logits
        original = model(ids).logits
        interns2_fast.unpatch(twin)
        want = twin(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - original).abs().max() > 1e-3


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickled_copy_computes_with_its_weights(how):
    model = models.build_causal_lm("qwen3_next")
    interns2_fast.patch(model)
    back = round_trip(model, how)
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
        for st in _gdn_states(back):  # whatever the round trip kept shared, a weight change is seen
            _proj_modules(st)[0].weight.zero_()
        got = back(ids).logits
        interns2_fast.unpatch(back)
        torch.testing.assert_close(got, back(ids).logits, atol=1e-5, rtol=1e-5)


def test_weights_separated_after_patching_are_re_viewed_or_run_separately():
    model = models.build_causal_lm("qwen3_5_moe")
    ids = _ids(model)
    with torch.no_grad():
        want = model(ids).logits
    interns2_fast.patch(model)
    states = _gdn_states(model)
    with torch.no_grad():
        for st in states:  # a param.data = ... from elsewhere: the weights no longer share the buffer
            w = _proj_modules(st)[1].weight
            w.data = w.data.clone()
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
        for st in states:  # the call re-viewed them into one buffer
            _assert_one_buffer(st)
            assert st.extra["projections"].ok
        seen = []
        for st in states:  # separated and hooked afterwards: cannot be re-viewed, the separate GEMMs run
            m = _proj_modules(st)[0]
            m.weight.data = m.weight.data.clone()
            m.register_forward_hook(lambda *a: seen.append(1))
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
        assert len(seen) == len(states)
        assert all(not st.extra["projections"].ok for st in states)


def _note(model):
    return {st.extra["projections_note"] for st in _gdn_states(model)}


def test_meta_model_is_patched_without_fusing():
    with torch.device("meta"):
        model = models._causal_lm_class("qwen3_5_moe")(models.tiny_config("qwen3_5_moe")).eval()
    assert model.model.layers[0].linear_attn.in_proj_qkv.weight.device.type == "meta"
    interns2_fast.patch(model)
    assert all(st.extra["projections"] is None for st in _gdn_states(model))
    assert any("meta device" in n for n in _note(model))
    interns2_fast.unpatch(model)


def test_hooks_and_dtype_mismatch_keep_separate_gemms():
    model = models.build_causal_lm("qwen3_5")
    layers = [m for m in model.modules() if hasattr(m, "in_proj_qkv")]
    seen = []
    layers[0].in_proj_z.register_forward_hook(lambda *a: seen.append(1))
    layers[-1].in_proj_a.to(torch.float64)
    ids = _ids(model)
    interns2_fast.patch(model)
    notes = _note(model)
    assert any("hooks" in n for n in notes) and any("dtypes" in n for n in notes), notes
    layers[-1].in_proj_a.to(torch.float32)
    with torch.no_grad():
        got = model(ids).logits
        assert seen  # the hooked projection still runs its own forward (and its hook)
        interns2_fast.unpatch(model)
        torch.testing.assert_close(got, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_biases_are_fused_too():
    model = models.build_causal_lm("qwen3_5_moe")
    gen = torch.Generator().manual_seed(3)
    for layer in [m for m in model.modules() if hasattr(m, "in_proj_qkv")]:
        for n in projections.LAYOUT_PROJECTIONS["qwen3_5"]:
            old = getattr(layer, n)
            new = nn.Linear(old.in_features, old.out_features, bias=True)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(torch.randn(old.out_features, generator=gen) * 0.1)
            setattr(layer, n, new)
    ids = _ids(model)
    with torch.no_grad():
        want = model(ids).logits
        interns2_fast.patch(model)
        for st in _gdn_states(model):
            assert st.extra["projections"].has_bias
            bs = [m.bias for m in _proj_modules(st)]
            assert len({b.untyped_storage().data_ptr() for b in bs}) == 1
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
    interns2_fast.unpatch(model)
    ptrs = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)


def test_grad_enabled_training_runs_the_separate_gemms_with_correct_grads(model_factory):
    model = model_factory("qwen3_5_moe")
    ids = _ids(model, T=8, B=2)
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if "in_proj" in n}
    interns2_fast.patch(model)
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if "in_proj" in n}
    assert got.keys() == want.keys() and want
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5, msg=n)
    model.zero_grad(set_to_none=True)


def _tied_weights_check(model):
    """transformers' own `ModelTesterMixin.test_tied_weights_keys` condition on `model`: every group of
    state-dict entries that share a storage must be declared in `_tied_weights_keys`, all but one."""
    from transformers.modeling_utils import _get_tied_weight_keys
    from transformers.pytorch_utils import id_tensor_storage

    tied_weight_keys = _get_tied_weight_keys(model)
    ptrs = collections.defaultdict(list)
    for name, tensor in model.state_dict().items():
        ptrs[id_tensor_storage(tensor)].append(name)
    tied_params = [names for names in ptrs.values() if len(names) > 1]
    for key in tied_weight_keys:
        assert any(re.search(key, p) for group in tied_params for p in group), \
            f"{key} is not a tied weight key pattern; with same params: {tied_params}"
    for key in tied_weight_keys:
        tied_params = [[p for p in group if re.search(key, p) is None] for group in tied_params]
    assert [group for group in tied_params if len(group) > 1] == [], "undeclared tied weights"


def _tied_model(family):
    config = models.tiny_config(family)
    config.tie_word_embeddings = True  # as transformers' test builds it
    return models.build_causal_lm(family, config)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_tied_weights_check_passes_on_a_patched_model(family):
    model = _tied_model(family)
    _tied_weights_check(model)
    interns2_fast.patch(model)
    states = _gdn_states(model)
    assert states
    for st in states:
        _assert_one_buffer(st)  # still fused: only the state dict hands out copies
    _tied_weights_check(model)
    sd, params = model.state_dict(keep_vars=True), dict(model.named_parameters())
    assert all(sd[n] is p for n, p in params.items() if n in sd)  # keep_vars: the Parameters themselves
    interns2_fast.unpatch(model)
    assert all(not m._state_dict_hooks for m in model.modules())
    _tied_weights_check(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip_of_a_patched_model(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = models.build_causal_lm(family)
    ids = _ids(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    interns2_fast.patch(model)
    with torch.no_grad():
        want = model(ids).logits
    model.save_pretrained(tmp_path)
    for st in _gdn_states(model):
        _assert_one_buffer(st)  # saving left the buffer alone
    back = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True,
                                                attn_implementation="eager").eval()
    got = back.state_dict()
    assert got.keys() == before.keys()
    for k in before:
        assert torch.equal(got[k], before[k]), k
    interns2_fast.patch(back)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, want, atol=0, rtol=0)
