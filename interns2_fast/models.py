"""Model builders for the demo, tests and benchmarks: random weights, fixed seeds, no downloads.

* `intern_s2_text_config()` — the full Intern-S2-Preview text model (BRIEF §2; transformers'
  Qwen3_5MoeTextConfig defaults reproduce it).
* `default_config()` — the built-in default: a scaled-down Intern-S2 (same layer pattern, GVA
  ratio, top-8 routing) that runs on 2 CPU cores in seconds.
* `tiny_config(family)` / `build_causal_lm(family)` — tiny models of each supported family.
* `intern_s2_remote_code_dir()` — an Intern-S2-Preview remote-code stand-in: transformers 5.2.0's
  qwen3_5_moe code renamed to `InternS2Preview*` (shipped in intern_s2_stand_in/), written as a model
  folder with `auto_map` and the weights of `InternS2PreviewForConditionalGeneration` (a tiny vision
  tower + the text model), loaded through `trust_remote_code=True` exactly like the real checkpoint.
* `build_full_width_stack()` — N full-width Intern-S2 layers (default 4: three linear-attention,
  one full-attention) with a small vocabulary, for end-to-end benchmarks.
"""
from __future__ import annotations

import json
import pathlib
import re
import tempfile

import torch

FAMILIES = ("qwen3_5_moe", "qwen3_next", "qwen3_5", "interns2_remote")


def _layer_types(num_layers: int, full_attention_interval: int = 4) -> list[str]:
    return ["full_attention" if i % full_attention_interval == full_attention_interval - 1 else "linear_attention"
            for i in range(num_layers)]


def intern_s2_text_config(num_layers: int = 40, **overrides):
    """The full-size Intern-S2-Preview text config (optionally fewer layers / other overrides)."""
    from transformers import Qwen3_5MoeTextConfig

    kwargs = dict(num_hidden_layers=num_layers, layer_types=_layer_types(num_layers))
    kwargs.update(overrides)
    return Qwen3_5MoeTextConfig(**kwargs)


def _scaled_down_kwargs(num_layers: int) -> dict:
    # Every ratio that matters to the kernels is kept: GVA 2:1, conv kernel 4, top-8 routing with a
    # shared expert, 1 full-attention layer in 4, partial rotary; widths are shrunk.
    return dict(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=num_layers,
        layer_types=_layer_types(num_layers),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        num_experts=16,
        num_experts_per_tok=8,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=64,
        max_position_embeddings=4096,
        initializer_range=0.05,
    )


def default_config(num_layers: int = 4):
    """The built-in default model: a scaled-down Intern-S2 (Qwen3_5MoeTextConfig)."""
    from transformers import Qwen3_5MoeTextConfig

    return Qwen3_5MoeTextConfig(**_scaled_down_kwargs(num_layers))


def tiny_config(family: str = "qwen3_5_moe", num_layers: int = 4):
    """A tiny config of `family` (one of FAMILIES); all share the scaled-down widths."""
    kw = _scaled_down_kwargs(num_layers)
    if family in ("qwen3_5_moe", "interns2_remote"):
        from transformers import Qwen3_5MoeTextConfig

        return Qwen3_5MoeTextConfig(**kw)
    if family == "qwen3_next":
        from transformers import Qwen3NextConfig

        kw.update(intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
        kw.pop("layer_types")
        cfg = Qwen3NextConfig(**kw)
        cfg.layer_types = _layer_types(num_layers)
        return cfg
    if family == "qwen3_5":
        from transformers import Qwen3_5TextConfig

        for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"):
            kw.pop(key)
        kw.update(intermediate_size=128)
        return Qwen3_5TextConfig(**kw)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


#: families with a vision-language class (`...ForConditionalGeneration`): transformers' own two and the
#: remote-code stand-in's
VLM_FAMILIES = ("qwen3_5_moe", "qwen3_5", "interns2_remote")
#: the tiny vision-language configs' special tokens (the top of the 512-token vocabulary)
VISION_TOKENS = dict(image_token_id=508, video_token_id=509, vision_start_token_id=510, vision_end_token_id=511)


def tiny_vlm_config(family: str = "qwen3_5_moe", num_layers: int = 4):
    """A tiny vision-language config of `family` (Intern-S2-Preview's architecture is the qwen3_5_moe one):
    the tiny text config plus a one-block vision tower whose merged patches land in the text width, and
    an mrope split of the tiny rotary (head_dim 32 x 0.25 = 8 dims = 4 frequencies)."""
    if family not in VLM_FAMILIES:
        raise ValueError(f"no vision-language class for {family!r}; expected one of {VLM_FAMILIES}")
    family = "qwen3_5_moe" if family == "interns2_remote" else family
    return _vlm_of_text_config(tiny_config(family, num_layers), family)


def _vlm_of_text_config(text, family: str = "qwen3_5_moe"):
    """transformers' vision-language config of `family` around the text config `text` (mrope on its
    rotary, the tiny vision tower, VISION_TOKENS)."""
    import copy

    import transformers

    text = copy.deepcopy(text)
    rope = dict(getattr(text, "rope_parameters", None) or {})
    rope.update(mrope_section=[2, 1, 1], mrope_interleaved=True)
    text.rope_parameters = rope
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text.hidden_size,
                  num_position_embeddings=64)
    cls = transformers.Qwen3_5MoeConfig if family == "qwen3_5_moe" else transformers.Qwen3_5Config
    return cls(text_config=text.to_dict(), vision_config=vision, **VISION_TOKENS)


def build_vlm(family: str = "qwen3_5_moe", config=None, *, seed: int = 0, dtype=torch.float32, device="cpu",
              attn_implementation: str = "eager"):
    """A random-weight vision-language model (`Qwen3_5MoeForConditionalGeneration` /
    `Qwen3_5ForConditionalGeneration`) in eval mode: the class the Intern-S2-Preview checkpoint loads as.
    "interns2_remote": the remote-code stand-in's `InternS2PreviewForConditionalGeneration`, loaded through
    `AutoModelForCausalLM` with `trust_remote_code` from a folder written by `intern_s2_remote_code_dir`."""
    import transformers

    if family == "interns2_remote":
        path = intern_s2_remote_code_dir(config=config, seed=seed)
        return _load_remote(path, dtype, device, attn_implementation)
    config = config if config is not None else tiny_vlm_config(family)
    config._attn_implementation = attn_implementation
    for sub in ("text_config", "vision_config"):
        getattr(config, sub)._attn_implementation = attn_implementation
    cls = {"qwen3_5_moe": transformers.Qwen3_5MoeForConditionalGeneration,
           "qwen3_5": transformers.Qwen3_5ForConditionalGeneration}[family]
    torch.manual_seed(seed)
    model = cls(config)
    condition_weights(model, seed)
    return model.to(device=device, dtype=dtype).eval()


def image_prompt(config, lengths, *, grid=(1, 4, 4), image_at: int = 2, seed: int = 0) -> dict:
    """generate() inputs for a left-padded batch of prompts with one image each (random pixels):
    `lengths[b]` text tokens around `<vision_start> <image>... <vision_end>` placed after `image_at`
    text tokens; pads on the left up to the longest."""
    gen = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    t, h, w = grid
    n_image = t * h * w // vision.spatial_merge_size ** 2
    low = max(VISION_TOKENS.values()) + 1 - 16  # ordinary text ids stay below the special ones
    rows = []
    for n in lengths:
        text = torch.randint(0, low, (n,), generator=gen)
        rows.append(torch.cat([text[:image_at], torch.tensor([config.vision_start_token_id]),
                               torch.full((n_image,), config.image_token_id), torch.tensor([config.vision_end_token_id]),
                               text[image_at:]]))
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, width - len(r):] = r
        attention_mask[b, width - len(r):] = 1
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    pixel_values = torch.randn(len(rows) * t * h * w, patch_dim, generator=gen)
    out = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
               image_grid_thw=torch.tensor([list(grid)] * len(rows)))
    if _rope_index_takes_token_types():  # 5.15 +: mrope positions only with the processor's token types
        out["mm_token_type_ids"] = (input_ids == config.image_token_id).to(torch.int32)
    return out


def _rope_index_takes_token_types() -> bool:
    import inspect

    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeModel

    return "mm_token_type_ids" in inspect.signature(Qwen3_5MoeModel.get_rope_index).parameters


@torch.no_grad()
def condition_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make random weights well conditioned: routers and norms are not left at zero/one, so a
    kernel that ignores a norm weight or routes wrongly changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        is_norm = "norm" in name and leaf == "weight" and param.dim() == 1
        if is_norm:
            param.add_((0.1 * torch.randn(param.shape, generator=gen)).to(param.dtype))
        elif name.endswith("gate.weight") and param.dim() == 2:  # MoE router [E, H]
            param.copy_((torch.randn(param.shape, generator=gen) * param.shape[1] ** -0.5).to(param.dtype))
    return model


def _load_remote(path, dtype, device, attn_implementation):
    """AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True), as the README loads the checkpoint."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    return model.to(device).eval()


def _causal_lm_class(family: str):
    import transformers

    return {
        "qwen3_5_moe": transformers.Qwen3_5MoeForCausalLM,
        "qwen3_next": transformers.Qwen3NextForCausalLM,
        "qwen3_5": transformers.Qwen3_5ForCausalLM,
    }[family]


def build_causal_lm(family: str = "qwen3_5_moe", config=None, *, seed: int = 0, dtype=torch.float32,
                    device="cpu", attn_implementation: str = "eager"):
    """A random-weight causal LM of `family` in eval mode (the remote-code family loads through
    `trust_remote_code` from a text-only folder written by `intern_s2_remote_code_dir`: the stand-in's
    `InternS2PreviewForCausalLM`; `build_vlm("interns2_remote")` gives the checkpoint's own class)."""
    if family == "interns2_remote":
        path = intern_s2_remote_code_dir(config=config, seed=seed, text_only=True)
        return _load_remote(path, dtype, device, attn_implementation)
    config = config if config is not None else tiny_config(family)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = _causal_lm_class(family)(config)
    condition_weights(model, seed)
    return model.to(device=device, dtype=dtype).eval()


def build_full_width_stack(num_layers: int = 4, *, vocab_size: int = 1024, seed: int = 0, dtype=torch.float32,
                           device="cpu"):
    """N full-width Intern-S2 layers (BRIEF §2 shapes) with a small vocabulary, random weights."""
    config = intern_s2_text_config(num_layers, vocab_size=vocab_size)
    return build_causal_lm("qwen3_5_moe", config, seed=seed, dtype=dtype, device=device)


def build_full_width_layer(layer_type: str = "linear_attention", *, seed: int = 0, dtype=torch.float32,
                           device="cpu"):
    """One full-width Intern-S2 decoder layer (linear or full attention, plus the 256-expert MoE)."""
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeDecoderLayer

    config = intern_s2_text_config(4)
    config._attn_implementation = "eager"
    layer_idx = 0 if layer_type == "linear_attention" else 3
    torch.manual_seed(seed)
    layer = Qwen3_5MoeDecoderLayer(config, layer_idx)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.endswith(("gate_up_proj", "down_proj")) and param.dim() == 3:
                param.normal_(0.0, config.initializer_range)
            elif name == "mlp.gate.weight":
                param.normal_(0.0, config.hidden_size ** -0.5)
    condition_weights(layer, seed)
    return layer.to(device=device, dtype=dtype).eval()


# --- Intern-S2-Preview remote-code stand-in -----------------------------------------------------

REMOTE_MODEL_TYPE = "interns2_preview"
#: the transformers release whose qwen3_5_moe code Intern-S2-Preview's remote code is a renamed copy of
STAND_IN_SOURCE_VERSION = "5.2.0"
#: the shipped, generated stand-in sources (package data; see `render_stand_in_sources`)
STAND_IN_DIR = pathlib.Path(__file__).resolve().parent / "intern_s2_stand_in"
#: stand-in file -> the transformers module it is renamed from
STAND_IN_FILES = {"configuration_interns2_preview.py": "configuration_qwen3_5_moe",
                  "modeling_interns2_preview.py": "modeling_qwen3_5_moe"}
#: the stand-in folder's auto_map: as the checkpoint's, every Auto class it is loaded through gives the
#: vision-language class (AutoModelForCausalLM too: `from_pretrained(path, trust_remote_code=True)`)
STAND_IN_AUTO_MAP = {
    "AutoConfig": "configuration_interns2_preview.InternS2PreviewConfig",
    "AutoModel": "modeling_interns2_preview.InternS2PreviewModel",
    "AutoModelForCausalLM": "modeling_interns2_preview.InternS2PreviewForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_interns2_preview.InternS2PreviewForConditionalGeneration",
}

_STAND_IN_HEADER = """\
# GENERATED FILE - a test stand-in for Intern-S2-Preview's remote code, not the checkpoint's own file.
# Source: transformers {version}, src/transformers/models/qwen3_5_moe/{module}.py (Apache License 2.0,
# Copyright 2025 The Qwen Team and The HuggingFace Inc. team; the original notice follows), renamed
# Qwen3_5Moe -> InternS2Preview and qwen3_5_moe -> interns2_preview, relative imports made absolute, as
# the checkpoint ships it. Regenerate with transformers=={version} installed:
#     python -c "from interns2_fast import models; models.write_stand_in_sources()"
"""


def _renamed_source(module) -> str:
    """The module's source with Qwen3_5Moe -> InternS2Preview and relative imports made absolute."""
    import inspect

    src = inspect.getsource(module)
    src = src.replace("Qwen3_5Moe", "InternS2Preview").replace("qwen3_5_moe", REMOTE_MODEL_TYPE)
    src = src.replace("QWEN3_5_MOE", "INTERNS2_PREVIEW")
    src = re.sub(r"^from \.\.\.(\S*) import", lambda m: f"from transformers.{m.group(1)} import" if m.group(1)
                 else "from transformers import", src, flags=re.M)
    src = re.sub(r"^from \.\.(\S+) import", r"from transformers.models.\1 import", src, flags=re.M)
    return src


def render_stand_in_sources() -> dict[str, str]:
    """{file name: text} of the stand-in, rendered from the installed transformers, which must be
    STAND_IN_SOURCE_VERSION (the shipped files in STAND_IN_DIR are this output)."""
    import importlib

    import transformers

    if transformers.__version__ != STAND_IN_SOURCE_VERSION:
        raise RuntimeError(f"the stand-in is rendered from transformers {STAND_IN_SOURCE_VERSION}'s source; "
                           f"{transformers.__version__} is installed")
    out = {}
    for name, module in STAND_IN_FILES.items():
        mod = importlib.import_module(f"transformers.models.qwen3_5_moe.{module}")
        out[name] = _STAND_IN_HEADER.format(version=STAND_IN_SOURCE_VERSION, module=module) + _renamed_source(mod)
    return out


def write_stand_in_sources(folder=STAND_IN_DIR) -> None:
    """Regenerate the shipped stand-in sources (needs transformers == STAND_IN_SOURCE_VERSION)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render_stand_in_sources().items():
        (folder / name).write_text(text)


def _import_stand_in(path: pathlib.Path):
    """(configuration module, modeling module) of the stand-in code in `path`, imported under a
    throw-away package name; the caller removes it from sys.modules with `_forget_package`."""
    import importlib
    import importlib.util
    import sys

    name = f"_interns2_stand_in_{abs(hash(str(path)))}"
    pkg_spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    pkg = importlib.util.module_from_spec(pkg_spec)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
    try:
        return (name, importlib.import_module(f"{name}.configuration_interns2_preview"),
                importlib.import_module(f"{name}.modeling_interns2_preview"))
    except BaseException:
        _forget_package(name)
        raise


def _forget_package(name: str) -> None:
    import sys

    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


_STAND_IN_REASON: list = []


def stand_in_unavailable() -> str | None:
    """Why the shipped (transformers 5.2.0-derived) stand-in code cannot run on the installed
    transformers, or None where it imports and generates unpatched (checked once per process)."""
    if not _STAND_IN_REASON:
        _STAND_IN_REASON.append(_probe_stand_in())
    return _STAND_IN_REASON[0]


def _probe_stand_in() -> str | None:
    import transformers

    where = f"Intern-S2-Preview's remote code (transformers {STAND_IN_SOURCE_VERSION}'s qwen3_5_moe, renamed)"
    try:
        name, cfg_mod, mdl_mod = _import_stand_in(STAND_IN_DIR)
    except Exception as exc:  # noqa: BLE001
        return f"{where} does not import on transformers {transformers.__version__}: {type(exc).__name__}: {exc}"
    try:
        config = cfg_mod.InternS2PreviewConfig(**_stand_in_config_kwargs(tiny_config("qwen3_5_moe")))
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = mdl_mod.InternS2PreviewForConditionalGeneration(config).eval()
        with torch.no_grad():
            for inputs in (dict(input_ids=torch.tensor([[5, 6, 7]])), image_prompt(config, [3])):
                model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    except Exception as exc:  # noqa: BLE001
        return (f"{where} does not generate on transformers {transformers.__version__}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        _forget_package(name)
    return None


def _stand_in_config_kwargs(config) -> dict:
    """InternS2PreviewConfig kwargs from a vision-language config (text_config / vision_config / the
    vision token ids) or from a text config (given the tiny vision tower of `tiny_vlm_config`)."""
    if getattr(config, "text_config", None) is None:
        config = _vlm_of_text_config(config)
    drop = ("model_type", "transformers_version", "architectures", "auto_map")
    kwargs = {sub: {k: v for k, v in getattr(config, sub).to_dict().items() if k not in drop}
              for sub in ("text_config", "vision_config")}
    kwargs.update({k: getattr(config, k) for k in VISION_TOKENS})
    return kwargs


#: the auto_map of a text-only stand-in folder (`text_only=True`: the `interns2_remote` family's causal LM)
STAND_IN_TEXT_AUTO_MAP = {
    "AutoConfig": "configuration_interns2_preview.InternS2PreviewTextConfig",
    "AutoModelForCausalLM": "modeling_interns2_preview.InternS2PreviewForCausalLM",
}


def intern_s2_remote_code_dir(path=None, config=None, *, seed: int = 0, with_tokenizer: bool = False,
                              text_only: bool = False) -> pathlib.Path:
    """Write a model folder that loads like Intern-S2-Preview (`trust_remote_code=True`): the shipped
    stand-in code (transformers 5.2.0's qwen3_5_moe configuration/modeling modules renamed to
    `InternS2Preview*`), `auto_map` (STAND_IN_AUTO_MAP) and random weights of
    `InternS2PreviewForConditionalGeneration`, the class the checkpoint loads as (`config`: a
    vision-language config, or a text config given the tiny vision tower; default `tiny_vlm_config()`).
    `text_only=True` writes `InternS2PreviewForCausalLM` instead (`config`: a text config, default
    `tiny_config()`; STAND_IN_TEXT_AUTO_MAP). `with_tokenizer` adds a character tokenizer with a chat
    template (for `interns2-fast generate`). Raises RuntimeError with `stand_in_unavailable()`'s reason
    where the stand-in code cannot run on the installed transformers."""
    import shutil

    reason = stand_in_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    path = pathlib.Path(path or tempfile.mkdtemp(prefix="interns2_remote_"))
    path.mkdir(parents=True, exist_ok=True)
    for file in STAND_IN_FILES:
        shutil.copyfile(STAND_IN_DIR / file, path / file)

    # Build the weights with the renamed classes themselves, so the checkpoint's names match.
    name, cfg_mod, mdl_mod = _import_stand_in(path)
    try:
        if text_only:
            base = config if config is not None else tiny_config("interns2_remote")
            drop = ("model_type", "transformers_version", "architectures", "auto_map")
            cfg = cfg_mod.InternS2PreviewTextConfig(**{k: v for k, v in base.to_dict().items() if k not in drop})
            auto_map, cls = STAND_IN_TEXT_AUTO_MAP, mdl_mod.InternS2PreviewForCausalLM
        else:
            cfg = cfg_mod.InternS2PreviewConfig(**_stand_in_config_kwargs(config if config is not None
                                                                          else tiny_vlm_config("qwen3_5_moe")))
            auto_map, cls = STAND_IN_AUTO_MAP, mdl_mod.InternS2PreviewForConditionalGeneration
        cfg.auto_map = dict(auto_map)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = cls(cfg)
        condition_weights(model, seed)
        model.save_pretrained(path)
    finally:
        _forget_package(name)
    config_json = json.loads((path / "config.json").read_text())
    config_json["auto_map"] = dict(auto_map)
    (path / "config.json").write_text(json.dumps(config_json, indent=2))
    if with_tokenizer:
        write_char_tokenizer(path)
    return path


# A Qwen-style chat template with the thinking switch, for the character tokenizer below.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def write_char_tokenizer(path) -> None:
    """A character-level tokenizer with a chat template (ids < 100, inside the tiny models' vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "\n": 3}
    for i in range(32, 127):
        vocab[chr(i)] = len(vocab)
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
