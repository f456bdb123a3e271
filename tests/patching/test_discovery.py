"""discovery.forward_params: a forward's parameters read through decorators that hide them.

transformers 5.13-5.15 decorate the Gated DeltaNet forward with `force_accelerate_hooks`, a wrapper
without functools.wraps whose signature is `(self, *args, **kwargs)`; before the fix every
linear-attention layer was skipped there ("forward takes neither `cache` nor `cache_params`").
The decorators below behave the same way (written here, not copied); the model test runs on the
installed transformers (CI: 5.2.0, 5.15.1, the newest).
"""
import functools

import torch

from interns2_fast import models
from interns2_fast.patching import discovery, patch, unpatch


def hide_signature(fn):  # like force_accelerate_hooks: a plain closure, no functools.wraps
    def wrapped(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return wrapped


def keep_signature(fn):
    @functools.wraps(fn)
    def wrapped(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return wrapped


def layer_forward(self, hidden_states, cache_params=None, cache_position=None, attention_mask=None):
    return hidden_states


def test_forward_params_through_a_signature_hiding_wrapper():
    want = ("self", "hidden_states", "cache_params", "cache_position", "attention_mask")
    assert discovery.forward_params(layer_forward) == want
    assert discovery.forward_params(hide_signature(layer_forward)) == want
    assert discovery.forward_params(keep_signature(layer_forward)) == want
    assert discovery.forward_params(hide_signature(hide_signature(layer_forward))) == want
    assert discovery.forward_params(keep_signature(hide_signature(layer_forward))) == want


def test_forward_params_of_a_truly_variadic_forward_is_left_alone():
    def forward(self, *args, **kwargs):
        return None

    assert discovery.forward_params(forward) == ("self", "args", "kwargs")
    assert isinstance(discovery.forward_params(len), tuple)  # a builtin: no crash


def test_hidden_signature_gdn_layer_is_patched_and_matches(monkeypatch):
    """The installed Gated DeltaNet class with its forward wrapped as 5.15.1 wraps it: still found,
    patched and equal to the unpatched model."""
    model = models.build_causal_lm("qwen3_5_moe")
    layer_cls = type(model.model.layers[0].linear_attn)
    original = layer_cls.forward
    monkeypatch.setattr(layer_cls, "forward", hide_signature(discovery.inspect.unwrap(original)))
    ids = torch.randint(0, model.config.vocab_size, (2, 70))
    with torch.no_grad():
        ref = model(ids).logits
        report = patch(model, ops=("gdn", "conv", "norm"))
        out = model(ids).logits
    n_lin = sum(t == "linear_attention" for t in model.config.layer_types)
    assert report.counts() == {"gdn": n_lin, "conv": n_lin, "norm": n_lin}, report.summary()
    assert report.skipped == []
    assert ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item() <= 1e-4
    unpatch(model)


def test_installed_gdn_forward_exposes_its_cache_argument():
    model = models.build_causal_lm("qwen3_5_moe")
    params = discovery.forward_params(type(model.model.layers[0].linear_attn).forward)
    assert "cache" in params or "cache_params" in params, params
