"""How `patch()` installs the MoE family: the router and the sparse-MoE block of each MoE layer.

Per instance, like the other families: the router's forward -> `moe.router_forward`, the block's
forward -> `moe.sparse_moe_block_forward` (router MODULE call, so forward hooks such as
transformers' `output_router_logits` recorder still see the router's output; shared expert; ONE
`ops.moe_experts` call with the sigmoid-gated shared-expert add fused into its combine). What the
installed router returns in slot 0 is probed once, on the instance, before patching.
No host synchronisation: routing and the expert combine have static shapes.
"""
from __future__ import annotations

import functools

from ..device import device_guard
from . import moe
from .state import ModuleState, call_op, get_state, phase, verified_module_call


def router_impl(router, state: ModuleState, hidden_states):
    def run(m, h):
        with device_guard(h), phase(h.reshape(-1, h.shape[-1]).shape[0]):
            return moe.router_forward(m, h, slot0_is_probs=state.extra["slot0_is_probs"],
                                      call=functools.partial(call_op, state, "moe"))

    return verified_module_call(router, state, run, hidden_states)


def block_impl(block, state: ModuleState, hidden_states, *args, **kwargs):
    def run(m, h):
        with device_guard(h), phase(h.reshape(-1, h.shape[-1]).shape[0]):
            return moe.sparse_moe_block_forward(m, h, call=functools.partial(call_op, state, "moe"))

    return verified_module_call(block, state, run, hidden_states)


def skip_reason(block) -> str | None:
    """Why a structurally matched MoE block cannot be patched (None: it can)."""
    shared, gate = getattr(block, "shared_expert", None), getattr(block, "shared_expert_gate", None)
    if gate is not None and shared is None:
        return "shared_expert_gate without shared_expert"
    if shared is not None and gate is None:
        return "shared expert without a sigmoid gate (shared_expert_gate) is not implemented"
    if gate is not None and getattr(gate, "out_features", 1) != 1:
        return "shared_expert_gate is not a Linear(H -> 1)"
    act = getattr(block.experts, "act_fn", None)
    if act is not None and type(act).__name__ not in ("SiLU", "SiLUActivation", "SiluActivation"):
        return f"experts activation {type(act).__name__} (only SiLU is implemented)"
    return None


def install_moe(install, cand_path: str, block, backends: dict, verify) -> list[tuple[str, ModuleState]]:
    """Patch the block and its router; returns [(path, state)]."""
    router = block.gate
    router_path = f"{cand_path}.gate" if cand_path else "gate"
    existing = get_state(router)
    original = existing.original if existing is not None else router.forward
    slot0 = moe.router_semantics(router, original)
    r_state = install(router, dict(path=router_path, kind="moe_router", backends=backends, verify=verify,
                                   extra={"slot0_is_probs": slot0}), router_impl)
    b_state = install(block, dict(path=cand_path, kind="moe_block", backends=backends, verify=verify), block_impl)
    return [(router_path, r_state), (cand_path, b_state)]
