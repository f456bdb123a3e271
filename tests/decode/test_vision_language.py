"""The vision-language classes (`...ForConditionalGeneration`, what the Intern-S2-Preview checkpoint
loads as) through `patch()` + the static decode step: same tokens as the unpatched model.

These models carry position ids of shape [4, B, T] (the text row, then mrope's t / h / w rows); after a
prompt with an image the rows differ and the decode positions carry the image's offsets. Reference:
the unpatched model's own generate() (greedy, fp32), the same seed (sampling), and per-step top-1
agreement of the bf16 model with the unpatched bf16 model.
"""
import pytest
import torch

from interns2_fast import models, patch
from interns2_fast.decode import settings_of
from interns2_fast.patching import reference_mode

_MODELS: dict = {}


def vlm(family, dtype=torch.float32):
    key = (family, dtype)
    if key not in _MODELS:
        _MODELS[key] = models.build_vlm(family, dtype=dtype)
    model = _MODELS[key]
    patch(model)
    return model


def text_prompt(batch):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 480, (batch, 9), generator=g)
    mask = torch.ones(batch, 9, dtype=torch.long)
    for row, pad in zip(range(1, batch), (3, 1)):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return dict(input_ids=ids, attention_mask=mask)


def image_prompt(model, batch):
    return models.image_prompt(model.config, [5, 8, 3][:batch], seed=batch)


def run_both(model, inputs, **kw):
    stats = dict(settings_of(model).stats)
    with torch.no_grad():
        with reference_mode(model):
            ref = model.generate(**inputs, **kw)
        got = model.generate(**inputs, **kw)
    after = settings_of(model).stats
    assert after["static"] == stats["static"] + 1 and after["handed_over"] == stats["handed_over"], after
    return ref, got


@pytest.mark.parametrize("prompt", ["text", "image"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", models.VLM_FAMILIES)
def test_greedy_tokens_equal_the_unpatched_model(family, batch, prompt):
    model = vlm(family)
    inputs = text_prompt(batch) if prompt == "text" else image_prompt(model, batch)
    ref, got = run_both(model, inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(got, ref)
    positions = settings_of(model).last_runtime().step.position_ids  # [4, B, 1]: text row, then mrope t / h / w
    assert positions.shape == (4, batch, 1)
    # an unpadded row's first decode position: its length for text; an image's tokens take fewer mrope
    # positions (a 4x4 patch grid merged 2x2 spans 2 positions for 4 tokens), so the mrope rows run behind
    b = int(inputs["attention_mask"].all(-1).nonzero()[0])
    length = inputs["input_ids"].shape[1]
    mrope = positions[1:, b, 0] - (got.shape[1] - length - 1)  # the buffer advanced once per static step
    assert bool((mrope < length).all()) if prompt == "image" else bool((mrope == length).all()), (mrope, length)


@pytest.mark.parametrize("family", models.VLM_FAMILIES)
def test_seeded_sampling_equals_the_unpatched_model(family):
    model = vlm(family)
    inputs = image_prompt(model, 3)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=50)
    with torch.no_grad():
        with reference_mode(model):
            torch.manual_seed(7)
            ref = model.generate(**inputs, **kw)
        torch.manual_seed(7)
        got = model.generate(**inputs, **kw)
        torch.manual_seed(8)
        other = model.generate(**inputs, **kw)
    assert torch.equal(got, ref)
    assert not torch.equal(other, ref)  # the seed matters: the comparison can fail


def rms_ratio(a, b):
    return ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()


def test_bf16_decode_is_as_close_to_fp32_as_the_unpatched_bf16_model():
    """bf16: at every step where the fp32 model, the unpatched bf16 model and the patched bf16 model have
    fed the same tokens so far, the patched scores are as close to the fp32 model's as the unpatched bf16
    model's are (and close to those directly)."""
    kw = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_scores=True)
    anchor_model = vlm("qwen3_5_moe", torch.float32)
    inputs = image_prompt(anchor_model, 1)
    with torch.no_grad(), reference_mode(anchor_model):
        anchor = anchor_model.generate(**inputs, **kw)
    ref, got = run_both(vlm("qwen3_5_moe", torch.bfloat16), inputs, **kw)
    steps = len(anchor.scores)
    seqs = [x.sequences[:, -steps:] for x in (anchor, ref, got)]
    compared = 0
    for i in range(steps):
        if not all(torch.equal(seqs[0][:, :i], x[:, :i]) for x in seqs[1:]):
            break  # the runs fed different tokens from here on: their scores are not comparable
        a, r, g = anchor.scores[i], ref.scores[i], got.scores[i]
        assert rms_ratio(g, a) <= 1.5 * rms_ratio(r, a) + 0.01, (i, rms_ratio(g, a), rms_ratio(r, a))
        assert rms_ratio(g, r) <= 0.1, i
        compared += 1
    assert compared >= 2, compared  # the comparison covered decode steps of the static path
