"""The load-time switch: interns2_fast.from_pretrained and enable_auto_patch (trust_remote_code included)."""
import pytest
import torch
import transformers

import interns2_fast
from interns2_fast import models


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    return models.intern_s2_remote_code_dir(tmp_path_factory.mktemp("interns2_remote"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_5_moe")
    models.build_causal_lm("qwen3_5_moe").save_pretrained(path)
    return path


def test_from_pretrained_patches_remote_code_model(remote_dir):
    model = interns2_fast.from_pretrained(remote_dir, trust_remote_code=True, dtype=torch.float32)
    assert type(model).__name__ == "InternS2PreviewForConditionalGeneration"  # as the checkpoint loads
    report = interns2_fast.last_report(model)
    assert report is not None and report.counts()["gdn"] == 3 and report.counts()["moe"] == 8
    with torch.no_grad():
        ids = torch.randint(0, 512, (1, 7))
        out = model(ids).logits
        with interns2_fast.reference_mode(model):
            ref = model(ids).logits
    assert (out - ref).abs().max().item() <= 1e-4


def test_enable_auto_patch_covers_every_from_pretrained(remote_dir, qwen_dir):
    original = transformers.PreTrainedModel.__dict__["from_pretrained"]
    interns2_fast.enable_auto_patch(ops=("gdn", "conv", "norm"))
    try:
        assert interns2_fast.auto_patch_enabled()
        a = transformers.AutoModelForCausalLM.from_pretrained(remote_dir, trust_remote_code=True)
        b, info = transformers.Qwen3_5MoeForCausalLM.from_pretrained(qwen_dir, output_loading_info=True)
        for m in (a, b):
            assert interns2_fast.is_patched(m)
            assert set(interns2_fast.last_report(m).counts()) == {"gdn", "conv", "norm"}
    finally:
        interns2_fast.disable_auto_patch()
    assert transformers.PreTrainedModel.__dict__["from_pretrained"] is original
    c = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir)
    assert not interns2_fast.is_patched(c)


def test_device_map_load_is_patched_and_runs(qwen_dir):
    """device_map places the layers (one device here: the CPU); the patched model runs where they are."""
    pytest.importorskip("accelerate")
    model = interns2_fast.from_pretrained(qwen_dir, device_map="cpu")
    assert interns2_fast.is_patched(model)
    ids = torch.randint(0, 512, (1, 6))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        with interns2_fast.reference_mode(model):
            ref = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, ref)


class _FakeHook:
    """Stands in for accelerate's AlignDevicesHook (what device_map="auto" attaches to modules)."""

    def __init__(self):
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs

    def post_forward(self, module, output):
        return output


def _add_hook(module, log):
    # what accelerate.hooks.add_hook_to_module does: keep the forward in `_old_forward`, wrap it in `forward`
    module._hf_hook = _FakeHook()
    module._old_forward = module.forward

    def new_forward(*args, **kwargs):
        log.append(module)
        return module._old_forward(*args, **kwargs)

    module.forward = new_forward


def test_patch_keeps_accelerate_style_device_hooks():
    model = models.build_causal_lm("qwen3_5_moe")
    log = []
    gdn = model.model.layers[0].linear_attn
    experts = model.model.layers[0].mlp.experts
    for m in (gdn, model.model.layers[0].mlp, gdn.conv1d, experts):
        _add_hook(m, log)
    wrapper, old = gdn.__dict__["forward"], gdn.__dict__["_old_forward"]
    ids = torch.randint(0, 512, (1, 6))
    with torch.no_grad():
        ref = model(ids).logits
        interns2_fast.patch(model)
        assert gdn.__dict__["forward"] is wrapper and gdn.__dict__["_old_forward"] is not old
        log.clear()
        out = model(ids).logits
        assert gdn in log and model.model.layers[0].mlp in log  # the device hooks still run
        # the offload hooks of children whose weights are read directly fire although they are not called
        assert gdn.conv1d._hf_hook.calls >= 1 and experts._hf_hook.calls >= 1
        interns2_fast.unpatch(model)
        assert gdn.__dict__["_old_forward"] == old  # the same function bound to the same module
        again = model(ids).logits
    assert (out - ref).abs().max().item() <= 1e-4
    assert torch.equal(again, ref)
