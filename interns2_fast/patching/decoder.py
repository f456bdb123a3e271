"""The patched decoder layer: each `residual + h` and the RMSNorm after it as one op (`add_rms_norm`).

The decoder layer of Qwen3.5 / Qwen3.5-MoE / Qwen3-Next / Intern-S2 (every transformers version
this project supports) runs

    residual = x;  h = input_layernorm(x);  h = mixer(h, ...)          # linear_attn or self_attn
    h = residual + h;  residual = h;  h = post_attention_layernorm(h);  h = mlp(h)  (tuple: [0])
    return residual + h

and the model applies the next layer's `input_layernorm` (or, after the last layer, its final
`norm`) to what a layer returns. The patched forward computes the same with three `add_rms_norm`
calls per layer instead of two norms and two adds:

  * the add after the mixer fused with `post_attention_layernorm`;
  * the add after the MLP fused with the NEXT norm (the next layer's `input_layernorm`, or the
    final `norm` after the last layer): the layer returns the sum as before and hands the normed
    value over in a per-model `NormChain`, keyed by the identity (and version counter) of the
    returned tensor. The next patched layer (or the patched final norm) takes it when its input is
    that very tensor; anything else (an unpatched neighbour, a hook that moved the tensor to another
    device, an in-place change) makes it compute its norm itself. So a layer's output and every
    cache update are exactly what the original computes; only where the norm runs moves.
  * the first layer's `input_layernorm` runs as `add_rms_norm` without a residual.

In training mode nothing is handed over: each layer computes its own `input_layernorm` (as the
original does) and the last one leaves the final norm to itself. A handover crosses layers, and
gradient checkpointing recomputes one layer alone: the recomputation would find no handed-over norm
(a different graph than the first forward), and the norm handed over from a first forward that
reentrant checkpointing runs under no_grad would carry no gradient.

Found by structure: a layer with `input_layernorm` and `post_attention_layernorm` ((1 + w)-scaled
RMSNorms: checked by running the module once on a probe row at patch time), `mlp`, and one of
`linear_attn` / `self_attn`. The mixer is called the way the installed version's layer calls it:
the cache under the name the mixer's forward takes (`cache` 5.24+, `cache_params` /
`past_key_values` before), `cache_position` where the mixer takes it, the layer's remaining keyword
arguments where the mixer takes **kwargs (the linear-attention layer) or always (attention).
"""
from __future__ import annotations

import dataclasses
import inspect
import weakref

import torch
from torch import nn

from .. import ops
from ..device import device_guard
from .state import ModuleState, call_op, trains

#: the decoder layer forward's parameters this code knows how to pass on (any other: layer skipped)
KNOWN_PARAMS = frozenset({"hidden_states", "position_embeddings", "attention_mask", "position_ids",
                          "past_key_values", "cache", "cache_params", "cache_position", "use_cache",
                          "output_attentions"})
CACHE_NAMES = ("cache", "past_key_values", "cache_params")


class NormChain:
    """Hands a layer's pre-computed next norm to the next layer: one slot, taken once."""

    def __init__(self):
        self._key = None  # weakref to the tensor the layer returned
        self._version = -1
        self._normed = None

    def put(self, out: torch.Tensor, normed: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # a traced graph has no tensor identity to hand over by
            return
        self._key, self._version, self._normed = weakref.ref(out), out._version, normed

    def take(self, x: torch.Tensor) -> torch.Tensor | None:
        if torch.compiler.is_compiling():
            return None
        key, normed = self._key, self._normed
        self._key = self._normed = None
        if key is None or key() is not x or x._version != self._version:
            return None
        return normed

    def clear(self) -> None:
        self._key = self._normed = None

    # A chain holds a weak reference to an activation, which neither deepcopy nor pickle may carry:
    # a copy starts empty (shared by the copy's layers through the memo, like the original).
    def __deepcopy__(self, memo):
        return NormChain()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def norm_eps(norm: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        eps = getattr(norm, name, None)
        if isinstance(eps, (int, float)):
            return float(eps)
    return None


def one_plus_w_reason(norm: nn.Module | None, what: str) -> str | None:
    """None when `norm` is an RMSNorm with (1 + w) scaling over its 1-D weight, else why not."""
    if not isinstance(norm, nn.Module):
        return f"no {what} module"
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return f"{what} has no 1-D weight"
    eps = norm_eps(norm)
    if eps is None:
        return f"{what} has no eps / variance_epsilon"
    if w.device.type == "meta":
        return f"{what} is on the meta device (cannot check its arithmetic)"
    try:
        with torch.no_grad():
            probe = torch.linspace(-3.0, 3.0, 2 * w.shape[0], device=w.device).reshape(2, -1).to(w.dtype)
            got = type(norm).forward(norm, probe).float()
            want, _ = ops.add_rms_norm(probe, None, w, eps, backend="reference")
    except Exception as exc:  # noqa: BLE001 - any failure means: not the norm this op computes
        return f"{what} could not be probed ({type(exc).__name__}: {exc})"
    tol = 1e-5 if w.dtype == torch.float32 else 3e-2
    if got.shape != want.shape or not torch.allclose(got, want.float(), rtol=tol, atol=tol):
        return f"{what} is not an RMSNorm with (1 + w) scaling (probe mismatch)"
    return None


def _forward_sig(module: nn.Module) -> inspect.Signature | None:
    fn = type(module).forward
    fn = getattr(fn, "__wrapped__", fn)
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _has_var_kw(sig: inspect.Signature | None) -> bool:
    return sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def is_decoder_layer(m: nn.Module) -> bool:
    """The weak signature: what every decoder layer this patch handles has."""
    return all(isinstance(getattr(m, a, None), nn.Module) for a in ("input_layernorm", "post_attention_layernorm",
                                                                     "mlp")) \
        and (isinstance(getattr(m, "linear_attn", None), nn.Module) or isinstance(getattr(m, "self_attn", None),
                                                                                   nn.Module))


def decoder_skip_reason(layer: nn.Module) -> str | None:
    for what in ("input_layernorm", "post_attention_layernorm"):
        reason = one_plus_w_reason(getattr(layer, what, None), what)
        if reason is not None:
            return reason
    sig = _forward_sig(layer)
    if sig is None:
        return "decoder layer forward has no readable signature"
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)][1:]
    unknown = [p.name for p in params if p.name not in KNOWN_PARAMS]
    if unknown or not params or params[0].name != "hidden_states":
        return f"decoder layer forward takes parameters this patch does not know: {unknown or [p.name for p in params]}"
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return "decoder layer forward takes *args"
    if hasattr(layer, "linear_attn") and hasattr(layer, "self_attn"):
        kind = getattr(layer, "layer_type", getattr(layer, "block_type", None))
        if kind not in ("linear_attention", "full_attention"):
            return "decoder layer has both linear_attn and self_attn and no layer_type / block_type"
    return None


@dataclasses.dataclass
class _Mixer:
    name: str  # "linear_attn" | "self_attn"
    params: frozenset
    var_kw: bool

    @property
    def cache_name(self) -> str:
        for n in CACHE_NAMES:
            if n in self.params:
                return n
        return "cache_params" if self.name == "linear_attn" else "past_key_values"


def decoder_extra(layer: nn.Module, chain: NormChain, next_norm: nn.Module | None) -> dict:
    """What the patched forward needs, found at patch time."""
    if hasattr(layer, "linear_attn") and hasattr(layer, "self_attn"):
        kind = getattr(layer, "layer_type", getattr(layer, "block_type", None))
        name = "linear_attn" if kind == "linear_attention" else "self_attn"
    else:
        name = "linear_attn" if hasattr(layer, "linear_attn") else "self_attn"
    msig = _forward_sig(getattr(layer, name))
    mixer = _Mixer(name, frozenset(msig.parameters) if msig is not None else frozenset(), _has_var_kw(msig))
    sig = _forward_sig(layer)
    names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return {"sig": sig, "self_name": names[0], "params": frozenset(names[1:]), "var_kw": _has_var_kw(sig),
            "mixer": mixer, "chain": chain,
            "next_norm": next_norm}  # a plain reference: deepcopy / pickle map it to the copy's module


def _split(state: ModuleState, args, kwargs):
    """(hidden_states, the named parameters passed, the **kwargs passed, the cache) of a layer call."""
    params = state.extra["params"]
    if len(args) <= 1 and (not args or "hidden_states" not in kwargs):
        # how transformers calls a layer (hidden_states first, the rest by keyword): sorted without
        # inspect's binding, which costs microseconds per layer and token
        named = {"hidden_states": args[0]} if args else {}
        extra = {}
        for k, v in kwargs.items():
            (named if k in params else extra)[k] = v
        if "hidden_states" in named and (state.extra["var_kw"] or not extra):
            return _take_cache(named, extra)
    sig = state.extra["sig"]
    bound = sig.bind(None, *args, **kwargs)
    named = dict(bound.arguments)
    named.pop(state.extra["self_name"])
    extra = {}
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            extra = dict(named.pop(p.name, {}))
    return _take_cache(named, extra)


def _take_cache(named: dict, extra: dict):
    hidden_states = named.pop("hidden_states")
    cache = None
    for n in CACHE_NAMES:
        for src in (named, extra):
            if n in src:
                value = src.pop(n)
                cache = value if value is not None else cache
    return hidden_states, named, extra, cache


def _mix(self, state: ModuleState, h, named, extra, cache):
    mixer: _Mixer = state.extra["mixer"]
    kw = {"hidden_states": h, "attention_mask": named.get("attention_mask", extra.pop("attention_mask", None)),
          mixer.cache_name: cache}
    if "cache_position" in mixer.params:
        kw["cache_position"] = named["cache_position"] if "cache_position" in named else extra.pop("cache_position", None)
    if mixer.name == "linear_attn":
        if mixer.var_kw:
            kw.update(extra)
        return getattr(self, "linear_attn")(**kw)
    kw["position_ids"] = named.get("position_ids", extra.pop("position_ids", None))
    kw["position_embeddings"] = named.get("position_embeddings", extra.pop("position_embeddings", None))
    kw.update(extra)
    out = self.self_attn(**kw)
    return out[0] if isinstance(out, tuple) else out


def _norm(state, x, residual, norm):
    return call_op(state, "rmsnorm", ops.add_rms_norm, x, residual, norm.weight, norm_eps(norm))


def decoder_forward(self, state: ModuleState, *args, **kwargs):
    """Drop-in forward of a decoder layer with the adds fused into the norms (see the module docstring)."""
    hidden_states, named, extra, cache = _split(state, args, kwargs)
    chain: NormChain = state.extra["chain"]
    training = trains(self)
    with device_guard(hidden_states):
        h = None if training else chain.take(hidden_states)
        if h is None:
            h, _ = _norm(state, hidden_states, None, self.input_layernorm)
        h = _mix(self, state, h, named, extra, cache)
        h, residual = _norm(state, h, hidden_states, self.post_attention_layernorm)
        h = self.mlp(h)
        if isinstance(h, tuple):
            h = h[0]
        nxt = state.extra.get("next_norm")
        if not training and nxt is not None and nxt.weight.device == h.device and residual.dtype == h.dtype:
            normed, out = _norm(state, h, residual, nxt)
            chain.put(out, normed)
            return out
        return residual + h


def final_norm_forward(self, state: ModuleState, hidden_states):
    """Drop-in forward of the final (1 + w) RMSNorm: the value the last patched layer computed, or the op."""
    normed = None if trains(self) else state.extra["chain"].take(hidden_states)
    if normed is not None:
        return normed
    with device_guard(hidden_states):
        return call_op(state, "rmsnorm", ops.add_rms_norm, hidden_states, None, self.weight, norm_eps(self))[0]


def find_decoder_stacks(model: nn.Module):
    """[(path of the stack's owner, owner, [(path, layer), ...]), ...]: every ModuleList of decoder layers."""
    stacks = []
    for owner_path, owner in model.named_modules():
        for attr, child in owner.named_children():
            if isinstance(child, nn.ModuleList) and len(child) and all(is_decoder_layer(m) for m in child):
                prefix = f"{owner_path}.{attr}" if owner_path else attr
                stacks.append((owner_path, owner, [(f"{prefix}.{i}", m) for i, m in enumerate(child)]))
    return stacks


def _run(requested: str, resolved: str | None) -> str:
    """The backend to pass at run time: the requested one when it is what will run, else auto."""
    return requested if resolved == requested else "auto"


def install_decoder(install, model: nn.Module, backend: str, verify, resolved) -> tuple[list, list]:
    """Patch every decoder stack of `model` ("rmsnorm" family). `resolved(family, module)` gives
    (backend name, None) or (None, why not). Returns ([(path, module, state, backend name)],
    [(path, module, reason)])."""
    installed, skipped = [], []

    def check(module, reason):
        if reason is not None:
            return None, reason
        return resolved("rmsnorm", module)

    for owner_path, owner, layers in find_decoder_stacks(model):
        chain = NormChain()
        final = getattr(owner, "norm", None)
        final_path = f"{owner_path}.norm" if owner_path else "norm"
        final_name, final_reason = (check(final, one_plus_w_reason(final, "final norm"))
                                    if isinstance(final, nn.Module) else (None, "no final norm"))
        checked = [check(layer, decoder_skip_reason(layer)) for _, layer in layers]
        for i, ((path, layer), (name, reason)) in enumerate(zip(layers, checked)):
            if reason is not None:
                skipped.append((path, layer, reason))
                continue
            if i + 1 < len(layers):
                nxt = layers[i + 1][1].input_layernorm if checked[i + 1][1] is None else None
            else:
                nxt = final if final_reason is None else None
            if nxt is not None and nxt.weight.device != layer.post_attention_layernorm.weight.device:
                nxt = None  # a device boundary (device_map): the next device computes its own norm
            st = install(layer, dict(path=path, kind="decoder", backends={"add_rms_norm": _run(backend, name)},
                                     verify=verify,
                                     extra=decoder_extra(layer, chain, nxt)), decoder_forward)
            installed.append((path, layer, st, name))
        if final_reason is None:
            st = install(final, dict(path=final_path, kind="final_norm", backends={"add_rms_norm": _run(backend, final_name)},
                                     verify=verify, extra={"chain": chain}), final_norm_forward)
            installed.append((final_path, final, st, final_name))
        elif isinstance(final, nn.Module):
            skipped.append((final_path, final, final_reason))
    return installed, skipped
