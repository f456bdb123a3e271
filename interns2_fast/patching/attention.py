"""The patched full-attention layer: a single-token decode step on the static cache in two launches
besides the projections.

On a decode step of `interns2_fast.decode` (one token per sequence, the cache a `StaticDecodeCache`,
which offers `static_attention(layer_idx)` -> (keys, values, lens)) the forward runs

    qg = q_proj(x).view(B, Hq, 2D);  k = k_proj(x).view(B, Hkv, D);  v = v_proj(x).view(B, Hkv, D)
    q, _ = attention_prologue(qg, k, v, q_norm.weight, k_norm.weight, cos, sin, eps,
                              k_cache=keys, v_cache=values, cache_lens=lens)       # 1 launch
    o = decode_attention(q, keys, values, lens, gate=qg[..., D:], scale=scaling,
                         mask=attention_mask[:, 0, 0, :])                          # 1 launch
    return o_proj(o.reshape(B, 1, Hq * D)), None

where lens [B] int32 is the cache's device-side count of valid positions (position + 1; no host
read) and the mask is the static step's additive mask (prompt padding and unwritten positions at
the dtype's min: left-padded batches attend exactly where transformers' mask lets them). The
gate is read in place from q_proj's output (the layer's [q | gate] per-head layout).

Everything else — prefill, a DynamicCache or any other cache, several tokens, training, a mask of
another shape or dtype, output_attentions — calls the layer's own forward (the original), so the
result there is transformers' own. The math equals the layer's (q_norm / k_norm are (1 + w)
RMSNorms, checked on a probe row at patch time; partial rotary on the first R dims of q and k with
cos / sin as the model's rotary embedding gives them; eager attention roundings).

Found by structure (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`, `head_dim`,
`layer_idx`, `scaling`, and a gated q_proj of 2 * Hq * head_dim outputs), every transformers version
(the cache is the 4th positional argument or the keyword `past_key_values` / `cache`).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..device import device_guard
from .decoder import norm_eps, one_plus_w_reason
from .state import ModuleState, call_op, fire_offload_hooks, phase

REQUIRED = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "head_dim", "layer_idx", "scaling")


def is_attention(m: nn.Module) -> bool:
    """The weak signature of a (Qwen3.5-style) full-attention layer."""
    return all(isinstance(getattr(m, a, None), nn.Module) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) \
        and isinstance(getattr(m, "q_norm", None), nn.Module)


def _out_features(linear) -> int | None:
    w = getattr(linear, "weight", None)
    return w.shape[0] if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def heads(m: nn.Module) -> tuple[int, int, int]:
    """(Hq, Hkv, D) from the projections' shapes."""
    D = int(m.head_dim)
    return m.o_proj.weight.shape[1] // D, _out_features(m.k_proj) // D, D


def skip_reason(m: nn.Module) -> str | None:
    missing = [a for a in REQUIRED if not hasattr(m, a)]
    if missing:
        return f"attention-like module without {', '.join(missing)}"
    D = getattr(m, "head_dim", None)
    if not isinstance(D, int) or D <= 0:
        return f"head_dim {D!r} is not a positive int"
    outs = [_out_features(getattr(m, n)) for n in ("q_proj", "k_proj", "v_proj")]
    o_in = getattr(getattr(m.o_proj, "weight", None), "shape", (None, None))[1]
    if None in outs or o_in is None or o_in % D:
        return "projections are not linears with 2-D weights of whole heads"
    Hq, Hkv = o_in // D, outs[1] // D
    if outs[0] != 2 * Hq * D:
        return f"q_proj has {outs[0]} outputs, not the gated layout 2 * {Hq} heads * {D}"
    if outs[1] != outs[2] or outs[1] % D or Hkv == 0 or Hq % Hkv:
        return f"k_proj / v_proj outputs {outs[1]} / {outs[2]} are not {D}-wide kv heads dividing {Hq} q heads"
    for name in ("q_norm", "k_norm"):
        why = one_plus_w_reason(getattr(m, name), name)
        if why is not None:
            return why
        if getattr(m, name).weight.shape[0] != D:
            return f"{name} is not over head_dim {D}"
    if norm_eps(m.q_norm) != norm_eps(m.k_norm):
        return "q_norm and k_norm have different eps"
    if getattr(m, "sliding_window", None):
        return "sliding-window attention is not implemented"
    return None


def attention_extra(m: nn.Module) -> dict:
    Hq, Hkv, D = heads(m)
    return {"Hq": Hq, "Hkv": Hkv, "D": D, "eps": norm_eps(m.q_norm)}


def examples(m: nn.Module) -> dict[str, dict]:
    """Meta tensors shaped like the decode calls (what `patch()` checks the backends' predicates on)."""
    Hq, Hkv, D = heads(m)
    dt = m.q_proj.weight.dtype
    meta = lambda *s, dtype=dt: torch.empty(*s, dtype=dtype, device="meta")  # noqa: E731
    rot = getattr(m.config, "partial_rotary_factor", None) if hasattr(m, "config") else None
    R = max(2, int(D * rot) // 2 * 2) if isinstance(rot, (int, float)) and rot > 0 else D
    L = 64
    qg = meta(1, Hq, 2 * D)
    cache = dict(k_cache=meta(1, Hkv, L, D), v_cache=meta(1, Hkv, L, D), cache_lens=meta(1, dtype=torch.int32))
    return {
        "attention_prologue": dict(q=qg, k=meta(1, Hkv, D), v=meta(1, Hkv, D), q_weight=m.q_norm.weight,
                                   k_weight=m.k_norm.weight, cos=meta(1, R), sin=meta(1, R),
                                   eps=float(norm_eps(m.q_norm) or 1e-6), **cache),
        "decode_attention": dict(q=meta(1, Hq, D), k_cache=cache["k_cache"], v_cache=cache["v_cache"],
                                 cache_lens=cache["cache_lens"], gate=qg[..., D:], scale=float(m.scaling),
                                 k_new=None, v_new=None, mask=meta(1, L)),
    }


def _decode_inputs(self, args, kwargs):
    """(hidden, cos, sin, mask [B, L] | None, keys, values, lens) for a static decode step, else None."""
    hidden = args[0] if len(args) > 0 else kwargs.get("hidden_states")
    pe = args[1] if len(args) > 1 else kwargs.get("position_embeddings")
    mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")
    if len(args) > 3:
        cache = args[3]
    else:
        cache = kwargs.get("cache")
        cache = kwargs.get("past_key_values") if cache is None else cache
    static = getattr(cache, "static_attention", None)
    if static is None or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[1] != 1:
        return None
    if self.training or kwargs.get("output_attentions") or pe is None:
        return None
    kv = static(self.layer_idx)
    if kv is None:
        return None
    keys, values, lens = kv
    B, L = keys.shape[0], keys.shape[2]
    if hidden.shape[0] != B or keys.dtype != hidden.dtype or values.dtype != hidden.dtype:
        return None
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != (B, 1, 1, L) or mask.dtype != hidden.dtype:
            return None
        mask = mask[:, 0, 0, :]
    cos, sin = pe
    if cos.dim() != 3 or cos.shape[:2] != (B, 1) or cos.dtype != hidden.dtype:
        return None
    return hidden, cos[:, 0], sin[:, 0], mask, keys, values, lens


def attention_forward(self, state: ModuleState, *args, **kwargs):
    """Drop-in forward of the full-attention layer (see the module docstring)."""
    inputs = _decode_inputs(self, args, kwargs)
    if inputs is None:  # the layer's own forward (called unbound: torch.compile cannot trace a MethodType)
        if state.previous is not None:
            return state.previous(*args, **kwargs)
        return type(self).forward(self, *args, **kwargs)
    hidden, cos, sin, mask, keys, values, lens = inputs
    ex = state.extra
    Hq, Hkv, D = ex["Hq"], ex["Hkv"], ex["D"]
    B = hidden.shape[0]
    fire_offload_hooks(self, ("q_norm", "k_norm"), pre=True)
    try:
        with device_guard(hidden), phase(1):
            qg = self.q_proj(hidden).view(B, Hq, 2 * D)
            k = self.k_proj(hidden).view(B, Hkv, D)
            v = self.v_proj(hidden).view(B, Hkv, D)
            q, _ = call_op(state, "attention", ops.attention_prologue, qg, k, v, self.q_norm.weight,
                           self.k_norm.weight, cos, sin, ex["eps"], k_cache=keys, v_cache=values, cache_lens=lens)
            out = call_op(state, "attention", ops.decode_attention, q, keys, values, lens, qg[..., D:],
                          scale=float(self.scaling), mask=mask)
            return self.o_proj(out.reshape(B, 1, Hq * D)), None
    finally:
        fire_offload_hooks(self, ("q_norm", "k_norm"), pre=False)


def install_attention(install, model: nn.Module, verify, choose):
    """Patch every full-attention layer of `model`. `choose(op, module, example)` -> (backend to pass,
    backend that runs, note) or raises. Returns ([(path, module, state, runs, note)], [(path, module, why)])."""
    done, skipped = [], []
    for path, m in model.named_modules():
        if not is_attention(m):
            continue
        why = skip_reason(m)
        if why is None:
            try:
                ex = examples(m)
                chosen = {op: choose(op, m, ex[op]) for op in ("attention_prologue", "decode_attention")}
            except (ValueError, NotImplementedError) as exc:
                why = str(exc)
        if why is not None:
            skipped.append((path, m, why))
            continue
        backends = {op: run for op, (run, _, _) in chosen.items()}
        st = install(m, dict(path=path, kind="attention", backends=backends, verify=verify,
                             extra=attention_extra(m)), attention_forward)
        runs = "+".join(dict.fromkeys(r for _, r, _ in chosen.values()))
        done.append((path, m, st, runs, "; ".join(n for _, _, n in chosen.values() if n)))
    return done, skipped
