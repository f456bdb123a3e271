"""The first step of each new static runtime is checked against the model's own forward for the same token;
where the step does not run the model as its forward does (a future transformers: a cache method the static
cache lacks, a renamed cache keyword), generate() hands over to transformers' loop with a one-time note
naming the problem and the transformers version — same tokens, no exception.
"""
import logging

import pytest
import torch
import transformers

from interns2_fast import models, patch
from interns2_fast.decode import graph, settings_of
from interns2_fast.decode.step import find_parts


def prompt():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 512, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    ids[1, :2] = 0
    return dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)


def generate_twice(model, caplog, monkeypatch):
    monkeypatch.setattr(graph, "_NOTED", set())  # notes are once per process: start this test's count afresh
    kw = prompt()
    with caplog.at_level(logging.WARNING, logger="interns2_fast"):
        first = model.generate(**kw)
        second = model.generate(**kw)
    notes = [r.getMessage() for r in caplog.records if r.name == "interns2_fast"]
    return first, second, notes


def test_a_checked_model_runs_static_and_checks_once(caplog, monkeypatch):
    model = models.build_causal_lm("qwen3_5_moe")
    want = model.generate(**prompt())
    patch(model)
    first, second, notes = generate_twice(model, caplog, monkeypatch)
    assert torch.equal(first, want) and torch.equal(second, want)
    stats = settings_of(model).stats
    assert stats["static"] == 2 and stats["handed_over"] == 0 and settings_of(model).refused is None
    assert settings_of(model).last_runtime().checked and notes == []


def test_a_layer_calling_a_cache_method_the_static_cache_lacks_hands_over(monkeypatch, caplog):
    """A release whose linear-attention layer asks its cache for something new: transformers' caches have
    it, the static cache does not."""
    model = models.build_causal_lm("qwen3_5_moe")
    with torch.no_grad():
        cache_cls = type(model(torch.ones(1, 2, dtype=torch.long), use_cache=True).past_key_values)
    monkeypatch.setattr(cache_cls, "state_generation", lambda self, layer_idx: 0, raising=False)
    want = model.generate(**prompt())
    for layer in find_parts(model).layers:
        if getattr(layer, "linear_attn", None) is not None:
            mixer = layer.linear_attn
            original = mixer.forward

            def forward(*args, _original=original, _idx=mixer.layer_idx, **kwargs):
                cache = kwargs.get("cache", kwargs.get("cache_params"))
                if cache is not None:
                    cache.state_generation(_idx)
                return _original(*args, **kwargs)

            mixer.forward = forward
    patch(model, ops=("moe", "norm"))  # the GDN layers stay transformers' (as a partial patch leaves them)
    first, second, notes = generate_twice(model, caplog, monkeypatch)
    assert torch.equal(first, want) and torch.equal(second, want)
    stats = settings_of(model).stats
    assert stats["static"] == 0 and stats["handed_over"] == 2
    assert len(notes) == 1, notes  # once, at the first generate(); the second goes to transformers directly
    assert "state_generation" in notes[0] and f"transformers {transformers.__version__}" in notes[0]
    assert "transformers' own generate loop" in notes[0]


def _layer_dropping(keyword: str, base):
    """A decoder-layer class that silently drops `keyword` (and so runs without a cache when called with it)."""
    if keyword == "cache":
        def forward(self, hidden_states, *args, cache=None, **kwargs):
            return base.forward(self, hidden_states, *args, **kwargs)
    else:
        def forward(self, hidden_states, *args, past_key_values=None, **kwargs):
            return base.forward(self, hidden_states, *args, **kwargs)
    return type(f"Renamed{base.__name__}", (base,), {"forward": forward})


@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next"])
def test_a_renamed_cache_keyword_hands_over(family, caplog, monkeypatch):
    """A release whose decoder layer takes its cache under another keyword than the one its signature
    suggests to the step: the step's layers run without the cache, the logits differ, the check sees it."""
    model = models.build_causal_lm(family)
    want = model.generate(**prompt())
    layers = find_parts(model).layers
    own = "cache" if "cache" in find_parts.__globals__["inspect"].signature(type(layers[0]).forward).parameters \
        else "past_key_values"
    foreign = "past_key_values" if own == "cache" else "cache"
    cls = _layer_dropping(foreign, type(layers[0]))
    for layer in layers:
        layer.__class__ = cls
    assert find_parts(model).cache_keyword == foreign  # what the step will (wrongly) pass
    patch(model)
    first, second, notes = generate_twice(model, caplog, monkeypatch)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert settings_of(model).stats["handed_over"] == 2 and settings_of(model).stats["static"] == 0
    # the step's layers ran without their cache: a shape error in the attention, or logits the check rejects
    assert len(notes) == 1, notes
    assert "the step fails on this model" in notes[0] or "differ from the model's own forward" in notes[0]
    assert f"transformers {transformers.__version__}" in notes[0]


def test_a_layer_reading_its_position_from_the_cache_hands_over(caplog, monkeypatch):
    """A release whose attention scales its output by the cache's length (as temperature-tuned attention
    does): the static cache reports its capacity, not the length, so the step's logits differ — no
    exception anywhere; the comparison with the model's own forward is what catches it."""
    model = models.build_causal_lm("qwen3_5_moe")
    for layer in find_parts(model).layers:
        if getattr(layer, "self_attn", None) is not None:
            attn = layer.self_attn
            original = attn.forward

            def forward(*args, _original=original, **kwargs):
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
                out = _original(*args, **kwargs)
                scale = 1.0 + 0.05 * (int(cache.get_seq_length()) if cache is not None else 0)
                return (out[0] * scale, *out[1:]) if isinstance(out, tuple) else out * scale

            attn.forward = forward
    want = model.generate(**prompt())
    patch(model, ops=("gdn", "conv", "norm", "moe"))
    first, second, notes = generate_twice(model, caplog, monkeypatch)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert settings_of(model).stats["handed_over"] == 2 and settings_of(model).stats["static"] == 0
    assert len(notes) == 1 and "differ from the model's own forward" in notes[0], notes
    assert "RMS ratio" in notes[0] and f"transformers {transformers.__version__}" in notes[0]


def test_a_moved_helper_function_changes_nothing(monkeypatch, caplog):
    """A release that moves the padding helper (`apply_mask_to_padding_states`) out of the modeling module:
    the patched layer, which looks it up at patch time, masks the padding itself, and a left-padded batch
    still gives the unpatched model's tokens on the static path."""
    model = models.build_causal_lm("qwen3_5_moe")
    want = model.generate(**prompt())
    home = __import__(type(find_parts(model).layers[0].linear_attn).__module__, fromlist=["_"])
    helper = home.apply_mask_to_padding_states
    monkeypatch.delattr(home, "apply_mask_to_padding_states")
    report = patch(model)
    assert report.skipped == []
    monkeypatch.setattr(home, "apply_mask_to_padding_states", helper, raising=False)  # transformers still needs it
    first, second, notes = generate_twice(model, caplog, monkeypatch)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert settings_of(model).stats["static"] == 2 and notes == []
