"""The model fixtures build, run, and look like Intern-S2 where it matters."""
import json

import pytest
import torch
import transformers

from interns2_fast import models


def test_full_size_config_is_intern_s2():
    cfg = models.intern_s2_text_config()
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok) == (40, 2048, 256, 8)
    assert (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim) == (16, 32, 128)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == list(range(3, 40, 4))


def test_default_config_keeps_the_ratios():
    cfg = models.default_config()
    assert cfg.linear_num_value_heads == 2 * cfg.linear_num_key_heads
    assert cfg.num_experts_per_tok == 8 and cfg.linear_conv_kernel_dim == 4
    assert cfg.layer_types == ["linear_attention"] * 3 + ["full_attention"]


@pytest.mark.parametrize("family", models.FAMILIES)
def test_tiny_models_run_and_are_conditioned(family):
    model = models.build_causal_lm(family)
    ids = torch.randint(0, 500, (2, 6))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 6, model.config.vocab_size) and torch.isfinite(logits).all()
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert norms and all(p.std() > 0 for p in norms)
    if family != "qwen3_5":
        routers = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
        assert routers and all(p.abs().max() > 0 for p in routers)


@pytest.mark.stand_in
def test_remote_code_stand_in_is_loaded_as_a_dynamic_module():
    model = models.build_causal_lm("interns2_remote")  # the text-only class of the same remote code
    assert type(model).__name__ == "InternS2PreviewForCausalLM"
    assert type(model).__module__.startswith("transformers_modules.")
    layer = model.model.layers[0]
    assert hasattr(layer.linear_attn, "in_proj_qkv") and layer.mlp.experts.gate_up_proj.dim() == 3


@pytest.mark.stand_in
@pytest.mark.parametrize("auto", ["AutoModelForCausalLM", "AutoModelForImageTextToText"])
def test_remote_code_stand_in_loads_as_the_vision_language_class(tmp_path, auto):
    """As the checkpoint: AutoModelForCausalLM (what the README uses) and AutoModelForImageTextToText both
    give `InternS2PreviewForConditionalGeneration` (a vision tower + model.language_model + lm_head)."""
    import transformers

    from interns2_fast.decode.step import find_parts

    path = models.intern_s2_remote_code_dir(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["InternS2PreviewForConditionalGeneration"]
    assert config["model_type"] == "interns2_preview" and {"text_config", "vision_config"} <= config.keys()
    model = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    assert type(model).__name__ == "InternS2PreviewForConditionalGeneration"
    assert type(model).__module__.startswith("transformers_modules.")
    assert type(model.model.visual).__name__ == "InternS2PreviewVisionModel"
    layers = model.model.language_model.layers
    assert len(layers) == 4 and hasattr(layers[0].linear_attn, "in_proj_qkv")
    parts = find_parts(model)
    assert not isinstance(parts, str), parts
    assert parts.layers == list(layers) and parts.kinds == ["linear"] * 3 + ["attention"]


@pytest.mark.skipif(transformers.__version__ != models.STAND_IN_SOURCE_VERSION,
                    reason=f"the stand-in is rendered from transformers {models.STAND_IN_SOURCE_VERSION}'s source")
def test_shipped_stand_in_is_the_renamed_transformers_source():
    for name, text in models.render_stand_in_sources().items():
        assert (models.STAND_IN_DIR / name).read_text() == text, f"regenerate {name}: models.write_stand_in_sources()"


def test_full_width_layer_shapes():
    layer = models.build_full_width_layer("linear_attention", dtype=torch.bfloat16)
    attn = layer.linear_attn
    assert attn.conv1d.weight.shape == (8192, 1, 4)
    assert layer.mlp.experts.gate_up_proj.shape == (256, 1024, 2048)
    assert layer.mlp.experts.down_proj.shape == (256, 2048, 512)
