"""How `patch()` installs the MoE family: the router and the sparse-MoE block of each MoE layer.

Per instance, like the other families:
  * the router's forward -> `ops.moe_route` (returns what the installed router returns: slot 0 is
    the fp32 softmax in transformers 5.2, the raw logits later — found by running the instance's
    own forward once on a zero token — then the top-k weights in slot 0's dtype and int64 ids;
    `norm_topk_prob=False` routers (Qwen3-Next option) skip the renormalisation);
  * the block's forward -> router MODULE call (so forward hooks such as transformers'
    `output_router_logits` recorder still see the router's output), shared expert, then ONE
    `ops.moe_experts` call with the sigmoid-gated shared-expert add fused into its combine.

The block forward mirrors `patching.moe.sparse_moe_block_forward`, except that it calls the router
through the module instead of `router_forward` (which bypasses the module's hooks and so loses
`output_router_logits`) and probes router semantics on the instance (the class probe in `moe.py`
fails on routers with extra attributes such as Qwen3-Next's `norm_topk_prob`).
No host synchronisation: routing and the expert combine have static shapes.
"""
from __future__ import annotations

import torch

from .. import ops
from ..device import device_guard
from .gdn import _fire_hooks, record_call
from .state import ModuleState, get_state, verified_module_call

_SLOT0_IS_PROBS: dict[type, bool] = {}


def router_slot0_is_probs(router: torch.nn.Module, original) -> bool:
    """True when the router's own forward returns probabilities in slot 0 (5.2), False for logits."""
    cls = type(router)
    if cls not in _SLOT0_IS_PROBS:
        w = router.weight
        x = torch.zeros(1, w.shape[1], dtype=w.dtype, device=w.device)
        first = None
        # the instance's own forward; through the module call when its weight is offloaded (accelerate
        # hooks bring it in); if neither can run here, assume logits (only `output_router_logits` reads slot 0)
        for call in (original, router):
            try:
                with torch.no_grad():
                    first = call(x if w.device.type != "meta" else x.to("cpu"))[0]
                if first.device.type == "meta":
                    first = None
                    continue
                break
            except Exception:  # noqa: BLE001
                first = None
        if first is None:
            return False
        _SLOT0_IS_PROBS[cls] = bool(first.float().abs().sum() > 0)  # 1/E each vs 0 logits
    return _SLOT0_IS_PROBS[cls]


def _route(router, backend, hidden_states, slot0_is_probs):
    hidden = hidden_states.reshape(-1, router.weight.shape[1])
    renorm = bool(getattr(router, "norm_topk_prob", True))
    record_call("moe", ops.moe_route, (hidden, router.weight, router.top_k), dict(renormalize=renorm), backend,
                tokens=hidden.shape[0])
    logits, weights, ids = ops.moe_route(hidden, router.weight, router.top_k, renormalize=renorm, backend=backend)
    first = torch.softmax(logits, dim=-1, dtype=torch.float32) if slot0_is_probs else logits
    return first, weights.to(first.dtype), ids


def router_impl(router, state: ModuleState, hidden_states):
    def run(m, h):
        with device_guard(h):
            return _route(m, state.backend("moe"), h, state.extra["slot0_is_probs"])

    return verified_module_call(router, state, run, hidden_states)


def block_impl(block, state: ModuleState, hidden_states, *args, **kwargs):
    def run(m, h):
        backend = state.backend("moe")
        shape = h.shape
        x = h.reshape(-1, shape[-1])
        with device_guard(x):
            _, weights, ids = m.gate(x)
            shared = getattr(m, "shared_expert", None)
            shared_out = shared(x) if shared is not None else None
            gate = getattr(m, "shared_expert_gate", None)
            shared_gate = gate(x) if (gate is not None and shared_out is not None) else None
            experts = m.experts
            # the experts' weights are read directly: fire an offload hook of that child (device_map with
            # CPU/disk offload) around the call, as transformers' force_accelerate_hooks does for conv1d
            _fire_hooks(m, ("experts",), pre=True)
            try:
                args = (x, ids, weights, experts.gate_up_proj, experts.down_proj)
                kw = dict(shared_expert_output=shared_out, shared_expert_gate=shared_gate)
                record_call("moe", ops.moe_experts, args, kw, backend, tokens=x.shape[0])
                out = ops.moe_experts(*args, backend=backend, **kw)
            finally:
                _fire_hooks(m, ("experts",), pre=False)
        return out.reshape(shape)

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
    slot0 = router_slot0_is_probs(router, original)
    r_state = install(router, dict(path=router_path, kind="moe_router", backends=backends, verify=verify,
                                   extra={"slot0_is_probs": slot0}), router_impl)
    b_state = install(block, dict(path=cand_path, kind="moe_block", backends=backends, verify=verify), block_impl)
    return [(router_path, r_state), (cand_path, b_state)]
