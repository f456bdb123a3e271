"""`patch(model); model.generate(...)` through the static decode step: same tokens as transformers.

Reference = transformers' own `generate()` loop: on the unpatched model (greedy) and on the same
patched model with `static_decode=False` (greedy, sampling, scores, streamer, beam search). The
static loop differs from transformers' loop only in its attention reading a fixed-length cache
under a mask (and not in the patched kernels), so sampling with the same seed must give the same
tokens too. Every test also checks that the static loop really ran (or really handed over).
"""
import copy
import inspect
import logging
import pickle
import warnings

import pytest
import torch
import transformers
from transformers.generation.streamers import BaseStreamer

from interns2_fast import models, patch, unpatch
from interns2_fast.decode import settings_of

FAMILIES = ("qwen3_5_moe", "qwen3_next", "qwen3_5", "interns2_remote")
def prompts(batch: int, length: int = 9, vocab: int = 512, seed: int = 1):
    """Random ids; rows after the first are left-padded by 3 and 1 positions (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in zip(range(1, batch), (3, 1, 2, 4)):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def static_stats(model):
    return dict(settings_of(model).stats)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_identical_to_transformers(model_factory, family, batch):
    model = model_factory(family)
    ids, mask = prompts(batch)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    reference = model.generate(ids, **kw)  # unpatched: transformers' loop and fallbacks
    patch(model, static_decode=False)
    transformers_loop = model.generate(ids, **kw)
    assert settings_of(model) is None
    patch(model)
    before = static_stats(model)
    static = model.generate(ids, **kw)
    after = static_stats(model)
    assert after["static"] == before["static"] + 1 and after["steps"] - before["steps"] == 11
    assert settings_of(model).last_runtime().runner.kind == "eager"  # CPU
    assert static.shape == reference.shape == (batch, 9 + 12)
    assert torch.equal(static, transformers_loop)
    assert torch.equal(static, reference)


def test_repeated_generate_reuses_the_static_buffers(model_factory):
    model = model_factory("qwen3_5_moe")
    patch(model)
    ids, mask = prompts(3)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    rt = settings_of(model).last_runtime()
    ptrs = {k: v.data_ptr() for k, v in rt.step.buffers().items()}
    second = model.generate(ids[:, 2:], attention_mask=mask[:, 2:], max_new_tokens=6, do_sample=False)
    assert settings_of(model).last_runtime() is rt
    assert {k: v.data_ptr() for k, v in rt.step.buffers().items()} == ptrs
    patch(model, static_decode=False)
    assert torch.equal(first, model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False))
    assert torch.equal(second, model.generate(ids[:, 2:], attention_mask=mask[:, 2:], max_new_tokens=6,
                                              do_sample=False))


@pytest.mark.parametrize("family", ["qwen3_5_moe", "interns2_remote"])
def test_sampling_with_a_fixed_seed_matches_transformers_loop(model_factory, family):
    model = model_factory(family)
    ids, mask = prompts(3)
    kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    patch(model, static_decode=False)
    torch.manual_seed(123)
    want = model.generate(ids, **kw)
    patch(model)
    torch.manual_seed(123)
    got = model.generate(ids, **kw)
    assert static_stats(model)["static"] == 1
    assert torch.equal(got, want)
    torch.manual_seed(124)  # a different seed gives different tokens: the test can tell
    assert not torch.equal(model.generate(ids, **kw), want)


def _eos_from_reference(model, ids, mask):
    """A token that row 0 emits at step 3 of greedy decoding (so eos stops that row early)."""
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    return int(out[0, ids.shape[1] + 3])


def test_eos_and_padding_of_finished_rows(model_factory):
    model = model_factory("qwen3_5_moe")
    ids, mask = prompts(3)
    patch(model, static_decode=False)
    eos = _eos_from_reference(model, ids, mask)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    want = model.generate(ids, **kw)
    patch(model)
    got = model.generate(ids, **kw)
    assert torch.equal(got, want)
    assert (want[0, ids.shape[1] + 4:] == 0).all()  # row 0 finished and was padded
    # all rows finishing early: the loop stops where transformers stops
    kw1 = dict(kw, input_ids=ids[:1], attention_mask=mask[:1])
    got1 = model.generate(**kw1)
    patch(model, static_decode=False)
    want1 = model.generate(**kw1)
    assert got1.shape == want1.shape == (1, ids.shape[1] + 4)
    assert torch.equal(got1, want1)


def test_deferred_stop_check_cuts_the_overrun(model_factory):
    """Off the CPU "all finished?" is read every `stop_check_every` tokens (one host sync per
    window); steps run past the finish are cut off so the result is transformers'. Forced here
    with an explicit interval (on the CPU the default reads it every token)."""
    model = model_factory("qwen3_5_moe")
    ids, mask = prompts(1)
    patch(model, static_decode=False)
    eos = _eos_from_reference(model, ids, mask)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    want = model.generate(ids, **kw)
    patch(model)
    settings_of(model).stop_check_every = 8
    got = model.generate(ids, **kw)
    assert torch.equal(got, want)
    generated = want.shape[1] - ids.shape[1]
    # 8 tokens (the prefill's + 7 steps) were made before the first check; 4 are kept
    assert generated == 4 and static_stats(model)["steps"] == 7


class _Collect(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_streamer_and_return_dict(model_factory):
    model = model_factory("qwen3_5_moe")
    ids, mask = prompts(3)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    patch(model, static_decode=False)
    s_ref = _Collect()
    want = model.generate(ids, streamer=s_ref, **kw)
    patch(model)
    s_got = _Collect()
    got = model.generate(ids, streamer=s_got, **kw)
    assert static_stats(model)["static"] == 1
    assert s_got.ended and s_got.puts == s_ref.puts and len(s_got.puts) == 1 + 8
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.scores) == len(want.scores) == len(got.logits) == 8
    for a, b in zip(got.scores + got.logits, want.scores + want.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the returned cache holds the decoded state, as transformers' loop leaves it
    cache_name = "past_key_values" if hasattr(want, "past_key_values") else "cache"
    ref_cache, got_cache = getattr(want, cache_name), getattr(got, cache_name)
    assert got_cache is not None and type(got_cache) is type(ref_cache)
    from interns2_fast.decode.static_cache import read_cache_states
    from interns2_fast.decode.step import find_parts

    kinds = find_parts(model).kinds
    for a, b in zip(read_cache_states(got_cache, kinds), read_cache_states(ref_cache, kinds)):
        assert a.a.shape == b.a.shape and a.b.shape == b.b.shape
        torch.testing.assert_close(a.a, b.a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.b, b.b, rtol=1e-4, atol=1e-5)


def test_unsupported_modes_hand_over_with_one_note(model_factory, caplog):
    model = model_factory("qwen3_5_moe")
    ids, mask = prompts(3)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, num_beams=2)
    patch(model, static_decode=False)
    want = model.generate(ids, **kw)
    patch(model)
    from interns2_fast.decode import graph

    graph._NOTED.clear()
    with caplog.at_level(logging.WARNING, logger="interns2_fast"):
        got = model.generate(ids, **kw)
        again = model.generate(ids, **kw)
    assert torch.equal(got, want) and torch.equal(again, want)
    stats = static_stats(model)
    assert stats["handed_over"] == 2 and stats["static"] == 0
    notes = [r for r in caplog.records if "beam search" in r.getMessage()]
    assert len(notes) == 1
    # output_hidden_states: handed over inside _sample, same result as transformers
    got = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         output_hidden_states=True, return_dict_in_generate=True)
    assert static_stats(model)["handed_over"] == 3 and got.hidden_states is not None


def test_decode_mode_set_up_once_per_generate_not_per_token(model_factory, monkeypatch):
    """transformers' loop enters `_optimize_model_for_decode` (on a non-CPU device: two
    `set_experts_implementation` walks over every module) around each decode step in 5.2; the
    static loop enters it once per generate(). The device is faked as non-CPU to make the walks
    happen; `set_experts_implementation` is counted, not run."""
    model = model_factory("qwen3_5_moe")
    model.config._experts_implementation = "grouped_mm"
    ids, mask = prompts(1)
    calls = []
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("meta")))
    monkeypatch.setattr(model, "set_experts_implementation", lambda impl: calls.append(impl), raising=False)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False)
    patch(model, static_decode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input_ids on a different device than the model"
        want = model.generate(ids, **kw)
        transformers_calls = len(calls)
        calls.clear()
        patch(model)
        got = model.generate(ids, **kw)
    assert torch.equal(got, want)
    assert len(calls) == 2  # to batched_mm and back, once
    # 5.2 walks twice per decode step (9 steps); later versions (5.15.1 on) moved the switch out of the
    # loop too. Which one is installed is read from its `_sample`: is the switch entered inside the loop?
    src = inspect.getsource(transformers.generation.utils.GenerationMixin._sample)
    loop_at = src.index("while self._has_unfinished_sequences")
    switch_at = src.index("with self._optimize_model_for_decode()")
    per_step = switch_at > loop_at
    assert transformers_calls == (2 * 9 if per_step else 2)


def test_other_instances_and_unpatch_are_untouched(model_factory):
    model = model_factory("qwen3_5_moe")
    other = models.build_causal_lm("qwen3_5_moe", seed=1)
    ids, mask = prompts(1)
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
    patch(model)
    assert settings_of(other) is None
    other.generate(ids, **kw)  # the class dispatcher hands an unpatched instance to transformers
    model.generate(ids, **kw)
    assert static_stats(model)["static"] == 1
    unpatch(model)
    assert settings_of(model) is None
    ref = model.generate(ids, **kw)
    patch(model)
    assert torch.equal(model.generate(ids, **kw), ref)


def test_reference_mode_runs_transformers_loop(model_factory):
    from interns2_fast.patching import reference_mode

    model = model_factory("qwen3_5_moe")
    ids, mask = prompts(3)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    patch(model)
    with reference_mode(model):
        got = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert static_stats(model) == {"static": 0, "handed_over": 0, "steps": 0}
    assert torch.equal(got, want)


def test_patched_model_deepcopies_and_pickles(model_factory):
    model = model_factory("qwen3_5_moe")
    patch(model)
    ids, mask = prompts(1)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False)
    want = model.generate(ids, **kw)
    clone = copy.deepcopy(model)
    settings = settings_of(clone)
    assert settings is not None and settings is not settings_of(model) and settings.runtimes == {}
    assert torch.equal(clone.generate(ids, **kw), want)
    assert settings.stats["static"] == 1
    restored = pickle.loads(pickle.dumps(settings_of(model)))
    assert restored.runtimes == {} and restored.mode == "auto"


def test_static_decode_argument(model_factory):
    model = model_factory("qwen3_5_moe")
    with pytest.raises(ValueError, match="static_decode"):
        patch(model, static_decode="sometimes")
    patch(model, static_decode="eager")
    assert settings_of(model).mode == "eager"
    patch(model, static_decode=False)
    assert settings_of(model) is None
