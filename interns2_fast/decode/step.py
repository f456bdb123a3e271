"""The fixed-address decode step: one token per sequence through every layer, into static buffers.

`DecodeStep()` reads only its static inputs (`input_ids` [B, 1], `position_ids` [B, 1], the
additive attention mask [B, 1, 1, max_len] and the cache's write `position` [1]) and writes only
preallocated tensors (the cache and `logits` [B, V] fp32); it advances the positions itself, on the
device. No host sync, no data-dependent shape, nothing whose address matters is allocated: it can
be captured in a device graph and replayed (`graph.py`), run eagerly, or `torch.compile`d.

What runs is the model's own code, module by module — the embedding, the rotary table, each
decoder layer's forward (input norm, token mixer, residuals, MLP / MoE block; patched or not), the
final norm and the LM head — on a `StaticDecodeCache`:

* full attention: patched (`patching/attention.py`), the q/k norm + rotary + KV write and the gated
  GQA attention over the cache's first `lens` positions under the mask, two ops; unpatched, the
  layer's own attention (its configured implementation, "eager" or "sdpa") over the whole static
  K/V with the mask. The mask is 0 where transformers' 2-D attention mask
  (prompt padding) says attend and at positions written so far, the dtype's minimum elsewhere; the
  step opens the current position before the layers run (`index_fill_` at the device position);
* linear attention: the patched layer's decode branch (`causal_conv1d_update` on the static conv
  state, `fused_recurrent_gated_delta_rule_with_gating` with `inplace_final_state=True` on the
  static recurrent state) or, unpatched, the transformers fallback (whose new state the cache
  copies in place);
* MoE: the patched sparse-MoE block (sync-free routing and experts) or the model's own block.

Structure is found by attributes (`find_parts`), not class names: `<base>.embed_tokens`,
`.layers[i].linear_attn | .self_attn`, `.norm`, `.rotary_emb`, and the LM head.
"""
from __future__ import annotations

import dataclasses
import inspect
import sys

import torch
from torch import nn

from .static_cache import StaticDecodeCache

SUPPORTED_ATTENTION = ("eager", "sdpa")


def _output_collector():
    """transformers' output recorder (5.x): once a call asked for hidden states or router logits, forward
    hooks on the layers read this context variable, which the model's forward sets. The step calls the
    layers itself, so it sets "nothing to record" itself: under `torch.compile` the variable's `set`
    switches it to a plain global (its own compile mode), so the hooks' `get` traces; eagerly it is the
    usual ContextVar set/reset. None where transformers has no such variable."""
    module = sys.modules.get("transformers.utils.output_capturing")
    collector = getattr(module, "_active_collector", None)
    return collector if hasattr(collector, "set") and hasattr(collector, "reset") else None


@dataclasses.dataclass
class ModelParts:
    embed: nn.Module
    layers: list
    kinds: list[str]  # "attention" | "linear" per layer
    norm: nn.Module
    rotary: nn.Module
    lm_head: nn.Module
    cache_keyword: str  # the decoder layer's keyword for the cache ("past_key_values" or "cache")
    passes_cache_position: bool


def _base_model(model: nn.Module):
    base = getattr(model, getattr(model, "base_model_prefix", "model") or "model", None)
    base = base if isinstance(base, nn.Module) else getattr(model, "model", None)
    inner = getattr(base, "language_model", None)  # multimodal wrappers keep the text model inside
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else base


def find_parts(model: nn.Module) -> ModelParts | str:
    """The modules the step runs, or the reason this model cannot run the static step."""
    base = _base_model(model)
    if base is None:
        return "no base model (model.model) found"
    missing = [n for n in ("embed_tokens", "layers", "norm", "rotary_emb") if getattr(base, n, None) is None]
    if missing:
        return f"the base model has no {', '.join(missing)}"
    lm_head = getattr(model, "lm_head", None)
    if lm_head is None and hasattr(model, "get_output_embeddings"):
        lm_head = model.get_output_embeddings()
    if lm_head is None:
        return "no LM head"
    layers = list(base.layers)
    kinds = []
    for i, layer in enumerate(layers):
        if getattr(layer, "linear_attn", None) is not None:
            kinds.append("linear")
        elif getattr(layer, "self_attn", None) is not None:
            kinds.append("attention")
        else:
            return f"decoder layer {i} has neither linear_attn nor self_attn"
    impl = getattr(model.config, "_attn_implementation", "eager") or "eager"
    if "attention" in kinds and impl not in SUPPORTED_ATTENTION:
        return f"attention implementation {impl!r} (the static step supports {SUPPORTED_ATTENTION})"
    try:
        params = inspect.signature(type(layers[0]).forward).parameters
    except (TypeError, ValueError):
        params = {}
    keyword = "cache" if "cache" in params else "past_key_values"
    return ModelParts(base.embed_tokens, layers, kinds, base.norm, base.rotary_emb, lm_head, keyword,
                      "cache_position" in params)


def split_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text positions for the layers, positions for the rotary), as the Qwen3.5 text models split them:
    the vision-language classes carry [4, B, T] (the text row, then mrope's t / h / w rows), the mrope
    text model [3, B, T], the text-only ones [B, T]."""
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[0], position_ids[1:]
    if position_ids.dim() == 3:
        return position_ids[0], position_ids
    return position_ids, position_ids


class DecodeStep:
    """The decode step of one model on one `StaticDecodeCache` (see the module docstring)."""

    def __init__(self, parts: ModelParts, cache: StaticDecodeCache, *, vocab_size: int, dtype: torch.dtype,
                 device: torch.device, position_shape: tuple[int, ...] | None = None):
        B = cache.batch
        self.parts = parts
        self.cache = cache
        self.input_ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(position_shape or (B, 1), dtype=torch.long, device=device)
        self.mask = torch.full((B, 1, 1, cache.max_len), torch.finfo(dtype).min, dtype=dtype, device=device)
        self.logits = torch.zeros(B, vocab_size, dtype=torch.float32, device=device)
        self.mask_min = torch.finfo(dtype).min
        self._kwargs = {parts.cache_keyword: cache}
        if parts.passes_cache_position:
            self._kwargs["cache_position"] = cache.position

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every static tensor the step reads or writes (inputs, mask, logits and the cache's)."""
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids, "mask": self.mask,
               "logits": self.logits}
        out.update({f"cache.{k}": v for k, v in self.cache.buffers().items()})
        return out

    @torch.no_grad()
    def load(self, states, kv_len: int, attention_mask: torch.Tensor | None, next_positions: torch.Tensor) -> None:
        """Set the step up after a prefill: the cache from `states`, the mask from the 2-D attention mask over
        the kv_len prompt positions (None: all attended), the position ids of the first decode step."""
        self.cache.load(states, kv_len)
        self.mask.fill_(self.mask_min)
        if attention_mask is None:
            self.mask[:, :, :, :kv_len].zero_()
        else:
            keep = attention_mask[:, -kv_len:].to(device=self.mask.device) != 0
            self.mask[:, 0, 0, :kv_len].masked_fill_(keep, 0.0)
        self.position_ids.copy_(next_positions.reshape(self.position_ids.shape))

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        parts, cache = self.parts, self.cache
        self.mask.index_fill_(-1, cache.position, 0.0)
        cache.sync_positions()
        collector = _output_collector()
        token = collector.set(None) if collector is not None else None
        try:
            hidden = parts.embed(self.input_ids)
            text_positions, rope_positions = split_positions(self.position_ids)
            position_embeddings = parts.rotary(hidden, rope_positions)
            for layer, kind in zip(parts.layers, parts.kinds):
                hidden = layer(hidden, position_embeddings=position_embeddings,
                               attention_mask=self.mask if kind == "attention" else None,
                               position_ids=text_positions, **self._kwargs)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
        finally:
            if collector is not None:
                collector.reset(token)
        hidden = parts.norm(hidden)
        self.logits.copy_(parts.lm_head(hidden[:, -1, :]))
        cache.advance()
        self.position_ids.add_(1)
        return self.logits
