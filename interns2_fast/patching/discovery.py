"""Find the modules `patch()` replaces, by structure (never by class name alone).

A model may be transformers' qwen3_5_moe / qwen3_5 / qwen3_next or the Intern-S2-Preview remote
code (a renamed copy of qwen3_5_moe): every candidate is recognised by the attributes its forward
uses, and a candidate that lacks something the patched forward needs is reported as skipped with
the reason.

  * linear-attention (Gated DeltaNet) layer: `conv1d` (depthwise Conv1d), `A_log`, `dt_bias`, `norm`,
    `out_proj`, head counts/dims, `layer_idx`, and either `in_proj_qkv`/`in_proj_z`/`in_proj_a`/
    `in_proj_b` (Qwen3.5) or `in_proj_qkvz`/`in_proj_ba` + `fix_query_key_value_ordering` (Qwen3-Next);
  * gated RMSNorm: 1-D `weight`, `variance_epsilon`, a forward taking `gate`;
  * sparse-MoE block: a router child (`weight` [E, H], `top_k`) and an experts child (3-D
    `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I]).
"""
from __future__ import annotations

import dataclasses
import inspect
import operator

import torch
from torch import nn

GDN_COMMON = ("conv1d", "A_log", "dt_bias", "norm", "out_proj", "num_k_heads", "num_v_heads", "head_k_dim",
              "head_v_dim", "layer_idx")
GDN_QWEN3_5 = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b")
GDN_QWEN3_NEXT = ("in_proj_qkvz", "in_proj_ba", "fix_query_key_value_ordering")


@dataclasses.dataclass
class Candidate:
    path: str
    module: nn.Module
    kind: str  # "gdn" | "norm" | "moe_block" | "moe_router" | "moe_experts"
    reason: str | None = None  # None: patchable; else why it is skipped
    layout: str | None = None  # gdn: "qwen3_5" | "qwen3_next"


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def forward_params(fn, _depth: int = 0) -> tuple[str, ...]:
    """The parameter names of `fn`, read through decorators that hide them.

    `inspect.signature` follows `functools.wraps` (`__wrapped__`); a decorator without it — such as
    transformers 5.13-5.15's `force_accelerate_hooks` on the Gated DeltaNet forward — shows only
    `(self, *args, **kwargs)`. Then the decorated function is found in the wrapper's closure and its
    signature read instead (a few levels deep at most).
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    named = [p for p in sig.parameters.values() if p.kind not in _VARIADIC]
    if len(named) <= 1 and any(p.kind in _VARIADIC for p in sig.parameters.values()) and _depth < 4:
        for cell in getattr(inspect.unwrap(fn), "__closure__", None) or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if inspect.isfunction(inner) and inner is not fn:
                found = forward_params(inner, _depth + 1)
                if len([n for n in found if n not in ("self", "args", "kwargs")]) > 0:
                    return found
    return tuple(sig.parameters)


def _forward_params(module: nn.Module) -> tuple[str, ...]:
    return forward_params(type(module).forward)


def _gdn_candidate(path: str, m: nn.Module) -> Candidate | None:
    # The weak signature: what every Gated DeltaNet layer has. Anything beyond it is checked below.
    if not (hasattr(m, "A_log") and hasattr(m, "dt_bias") and hasattr(m, "conv1d")):
        return None
    missing = [a for a in GDN_COMMON if not hasattr(m, a)]
    layout = None
    if all(hasattr(m, a) for a in GDN_QWEN3_5):
        layout = "qwen3_5"
    elif all(hasattr(m, a) for a in GDN_QWEN3_NEXT):
        layout = "qwen3_next"
    else:
        missing.append("in_proj_qkv/in_proj_z/in_proj_a/in_proj_b (or in_proj_qkvz/in_proj_ba)")
    if missing:
        return Candidate(path, m, "gdn", f"linear-attention-like module without {', '.join(missing)}")
    w = getattr(m.conv1d, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[1] != 1:
        return Candidate(path, m, "gdn", "conv1d is not a depthwise Conv1d with weight [D, 1, W]")
    if getattr(m.conv1d, "groups", w.shape[0]) != w.shape[0]:
        return Candidate(path, m, "gdn", "conv1d is not depthwise (groups != channels)")
    activation = getattr(m, "activation", "silu")
    if activation not in ("silu", "swish"):
        return Candidate(path, m, "gdn", f"activation {activation!r} (only silu is implemented)")
    if m.num_v_heads % m.num_k_heads:
        return Candidate(path, m, "gdn", f"value heads {m.num_v_heads} not a multiple of key heads {m.num_k_heads}")
    params = _forward_params(m)
    if "cache" not in params and "cache_params" not in params:
        return Candidate(path, m, "gdn", "forward takes neither `cache` nor `cache_params`: unknown cache protocol")
    return Candidate(path, m, "gdn", layout=layout)


def _norm_candidate(path: str, m: nn.Module) -> Candidate | None:
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return None
    params = _forward_params(m)
    if "gate" not in params:
        return None
    if not hasattr(m, "variance_epsilon"):
        return Candidate(path, m, "norm", "gated norm without `variance_epsilon` (a fused norm from another library?)")
    if getattr(m, "activation", "silu") not in ("silu", "swish"):
        return Candidate(path, m, "norm", f"gate activation {m.activation!r} (only silu is implemented)")
    if getattr(m, "group_size", None) not in (None, w.shape[0]):
        return Candidate(path, m, "norm", "grouped gated norm (group_size != width)")
    return Candidate(path, m, "norm")


def _is_count(x) -> bool:
    """An integral number (int, numpy integer: operator.index takes it), not a bool."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def is_router(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and _is_count(getattr(m, "top_k", None)) \
        and not isinstance(m, nn.Linear)


def is_experts(m: nn.Module) -> bool:
    gu, dn = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3


def _moe_block_candidate(path: str, m: nn.Module) -> Candidate | None:
    router, experts = getattr(m, "gate", None), getattr(m, "experts", None)
    if not (isinstance(router, nn.Module) and isinstance(experts, nn.Module)):
        return None
    if not (is_router(router) and is_experts(experts)):
        return None
    E, H = router.weight.shape
    gu, dn = experts.gate_up_proj, experts.down_proj
    if gu.shape[0] != E or dn.shape[0] != E:
        return Candidate(path, m, "moe_block", f"router has {E} experts, experts hold {gu.shape[0]}")
    if gu.shape[2] != H or dn.shape[1] != H or gu.shape[1] != 2 * dn.shape[2]:
        return Candidate(path, m, "moe_block",
                         f"expert weights {list(gu.shape)} / {list(dn.shape)} are not [E, 2I, H] / [E, H, I]"
                         " (transposed or biased experts are not implemented)")
    if getattr(experts, "has_bias", False) or getattr(experts, "is_transposed", False):
        return Candidate(path, m, "moe_block", "experts with bias or transposed weights are not implemented")
    return Candidate(path, m, "moe_block")


def find_candidates(model: nn.Module) -> list[Candidate]:
    """Every module `patch()` could replace, in `named_modules()` order."""
    found: list[Candidate] = []
    for path, m in model.named_modules():
        for probe in (_gdn_candidate, _norm_candidate, _moe_block_candidate):
            c = probe(path, m)
            if c is not None:
                found.append(c)
                break
    return found
