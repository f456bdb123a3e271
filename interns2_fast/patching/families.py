"""Patching as data: what `patch()` does for each kind of module it finds, in one table.

A *kind* is a structural class of module (`discovery` finds candidates of each kind); it serves
one or more op *families* (what `patch(ops=...)` names). Per kind the table gives the families,
a skip check beyond discovery, the installer and the patched forward. Per family it gives the ops
its forwards call (`state.FAMILY_OPS`) and `examples(module)`: meta tensors shaped like the calls
that module will make, on which `patch()` evaluates each backend's capability predicate — so the
backend a module will really run is known, and reported, before its first forward.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from . import attention, gdn, moe_block, projections
from .state import FAMILY_OPS


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _gdn_examples(m: nn.Module) -> dict[str, dict]:
    Hk, Hv, K, V = m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim
    dt = _dtype(m.conv1d)
    q, v = _meta(1, 2, Hk, K, dtype=dt), _meta(1, 2, Hv, V, dtype=dt)
    gate = _meta(1, 2, Hv, dtype=dt)
    q1, v1, gate1 = q[:, :1], v[:, :1], gate[:, :1]
    common = dict(scale=None, output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=None)
    return {
        "gdn_gating": dict(A_log=m.A_log, a=gate, dt_bias=m.dt_bias, b=gate, head_major=False),
        "chunk_gated_delta_rule": dict(q=q, k=q, v=v, g=gate.float(), beta=gate, initial_state=None, **common),
        "fused_recurrent_gated_delta_rule_with_gating": dict(
            q=q1, k=q1, v=v1, a=gate1, b=gate1, A_log=m.A_log, dt_bias=m.dt_bias,
            initial_state=_meta(1, Hv, K, V, dtype=torch.float32), inplace_final_state=True, **common),
    }


def _conv_examples(m: nn.Module) -> dict[str, dict]:
    w = m.conv1d.weight
    D, W = w.shape[0], w.shape[-1]
    x = _meta(1, D, 2, dtype=w.dtype)
    weight = _meta(D, W, dtype=w.dtype)
    bias = m.conv1d.bias
    return {
        "causal_conv1d_fn": dict(x=x, weight=weight, bias=bias, seq_idx=None, initial_states=None,
                                 return_final_states=False, final_states_out=None, activation="silu"),
        "causal_conv1d_update": dict(x=x[:, :, :1], conv_state=_meta(1, D, W, dtype=w.dtype), weight=weight,
                                     bias=bias, activation="silu"),
    }


def _norm_examples(m: nn.Module) -> dict[str, dict]:
    N = m.weight.shape[0]
    x = _meta(1, N, dtype=m.weight.dtype)
    return {"rms_norm_gated": dict(x=x, gate=x, weight=m.weight, eps=float(m.variance_epsilon))}


def _moe_examples(block: nn.Module) -> dict[str, dict]:
    router, experts = block.gate, block.experts
    E, H = router.weight.shape
    dt = router.weight.dtype
    k = int(router.top_k)
    hidden = _meta(1, H, dtype=dt)
    shared = getattr(block, "shared_expert", None) is not None
    return {
        "moe_route": dict(hidden=hidden, weight=router.weight, top_k=k, renormalize=True),
        "moe_experts": dict(hidden=hidden, topk_ids=_meta(1, k, dtype=torch.int64),
                            topk_weights=_meta(1, k, dtype=torch.float32), gate_up_proj=experts.gate_up_proj,
                            down_proj=experts.down_proj, shared_expert_output=hidden if shared else None,
                            shared_expert_gate=_meta(1, 1, dtype=dt) if shared else None),
        "moe_experts_shared": _moe_shared_example(block, hidden, k),
        "moe_sparse_block": _moe_block_example(block, hidden, k),
    }


def _moe_block_example(block: nn.Module, hidden, k: int) -> dict:
    ex = _moe_shared_example(block, hidden, k)
    del ex["topk_ids"], ex["topk_weights"]
    return dict(ex, router_weight=block.gate.weight, top_k=k, renormalize=True)


def _moe_shared_example(block: nn.Module, hidden, k: int) -> dict:
    """moe_experts_shared's call: the shared expert's own weights (meta stand-ins when it has none)."""
    from . import moe

    experts = block.experts
    H, dt = hidden.shape[1], hidden.dtype
    weights = moe.shared_expert_weights(block)
    if weights is None:
        IS = experts.down_proj.shape[-1]
        weights = (_meta(IS, H, dtype=dt), _meta(IS, H, dtype=dt), _meta(H, IS, dtype=dt), _meta(1, H, dtype=dt))
    return dict(hidden=hidden, topk_ids=_meta(1, k, dtype=torch.int64), topk_weights=_meta(1, k, dtype=torch.float32),
                gate_up_proj=experts.gate_up_proj, down_proj=experts.down_proj, shared_gate_proj=weights[0],
                shared_up_proj=weights[1], shared_down_proj=weights[2], shared_gate=weights[3])


def _rmsnorm_examples(m: nn.Module) -> dict[str, dict]:
    """A decoder layer (its post-attention norm) or the final norm."""
    norm = getattr(m, "post_attention_layernorm", m)
    N = norm.weight.shape[0]
    x = _meta(1, N, dtype=norm.weight.dtype)
    return {"add_rms_norm": dict(x=x, residual=x, weight=norm.weight, eps=1e-6)}


#: family -> example calls of its ops for a module of its kind
FAMILY_EXAMPLES: dict[str, Callable[[nn.Module], dict[str, dict]]] = {
    "gdn": _gdn_examples,
    "conv": _conv_examples,
    "norm": _norm_examples,
    "moe": _moe_examples,
    "rmsnorm": _rmsnorm_examples,  # installed per decoder stack by patching/decoder.py
    "attention": attention.examples,  # installed per full-attention layer by patching/attention.py
}
assert set(FAMILY_EXAMPLES) == set(FAMILY_OPS)


@dataclasses.dataclass(frozen=True)
class Kind:
    families: tuple[str, ...]
    #: extra reason to skip a structurally matched candidate (None: patchable)
    skip: Callable[[nn.Module], str | None]
    #: install(install_fn, path, module, backends, verify, settings) -> [(path, module, state)]
    install: Callable


def _install_gdn(install, path, module, backends, verify, settings, layout):
    extra = dict(gdn.gdn_extra(module, layout), continue_state=settings.get("fix_legacy_continuation", False))
    st = install(module, dict(path=path, kind="gdn", backends=backends, verify=verify, extra=extra), gdn.gdn_forward)
    st.extra.update(projections.fuse(module, layout))  # the input projections as one GEMM (patching/projections.py)
    return [(path, module, st)]


def _install_norm(install, path, module, backends, verify, settings, layout):
    st = install(module, dict(path=path, kind="norm", backends=backends, verify=verify), gdn.norm_forward)
    return [(path, module, st)]


def _install_moe(install, path, module, backends, verify, settings, layout):
    pairs = moe_block.install_moe(install, path, module, backends, verify)
    return [(p, m, st) for (p, st), m in zip(pairs, (module.gate, module))]


KINDS: dict[str, Kind] = {
    "gdn": Kind(("gdn", "conv"), lambda m: None, _install_gdn),
    "norm": Kind(("norm",), lambda m: None, _install_norm),
    "moe_block": Kind(("moe",), moe_block.skip_reason, _install_moe),
}

__all__ = ["FAMILY_EXAMPLES", "FAMILY_OPS", "KINDS", "Kind"]
