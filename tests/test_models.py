"""The model fixtures build, run, and look like Intern-S2 where it matters."""
import pytest
import torch

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


def test_remote_code_stand_in_is_loaded_as_a_dynamic_module():
    model = models.build_causal_lm("interns2_remote")
    assert type(model).__name__ == "InternS2PreviewForCausalLM"
    assert type(model).__module__.startswith("transformers_modules.")
    layer = model.model.layers[0]
    assert hasattr(layer.linear_attn, "in_proj_qkv") and layer.mlp.experts.gate_up_proj.dim() == 3


def test_full_width_layer_shapes():
    layer = models.build_full_width_layer("linear_attention", dtype=torch.bfloat16)
    attn = layer.linear_attn
    assert attn.conv1d.weight.shape == (8192, 1, 4)
    assert layer.mlp.experts.gate_up_proj.shape == (256, 1024, 2048)
    assert layer.mlp.experts.down_proj.shape == (256, 2048, 512)
