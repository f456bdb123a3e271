"""MoE hooks: the router, the experts and the sparse-MoE block on interns2_fast's ops.

The only place that knows how transformers' MoE modules (qwen3_5_moe and its Intern-S2-Preview
copy) look and what they return. Modules are used by structure:

  * router: `weight` [E, H], `top_k`, `hidden_dim`; forward(hidden) -> (slot0, weights, ids);
  * experts: `gate_up_proj` [E, 2I, H], `down_proj` [E, H, I] (SwiGLU, no bias, not transposed);
  * block: `gate` (router), `experts`, `shared_expert` (MLP), `shared_expert_gate` (Linear H -> 1).

What differs between versions is detected by behaviour, once per router class, on a zero-weight twin
of the instance, never on its own (possibly meta or uninitialised) weights (`router_semantics`):
transformers 5.2's router returns the softmax probabilities (fp32) in its first slot and the top-k
weights in fp32; 5.24 returns the raw logits (hidden's dtype) and casts the weights to the logits'
dtype. In both the weights take the first slot's dtype. The block forward returns one tensor
[B, L, H] in both versions (its shared-expert add is fused into the experts' combine here).

Backend choice: the `backend` argument; else a `interns2_fast_backend` attribute on the module;
else the backend `interns2_fast.patch` recorded for the "moe" family; else "auto".

Registering the experts implementation (`register_experts_implementation`) makes
`config._experts_implementation = "interns2_fast"` route every `@use_experts_implementation`
experts module through `experts_forward`. transformers 5.2's `PreTrainedModel` validation of
`experts_implementation=` in `from_pretrained` only accepts its built-in names; set the config
attribute after loading (or patch the block) there. Expert-parallel sentinel ids (>= E) are not
supported by these hooks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops

#: The attribute a module may carry to pick the backend of these hooks.
BACKEND_ATTR = "interns2_fast_backend"
EXPERTS_IMPLEMENTATION = "interns2_fast"


def _backend(module: torch.nn.Module, backend: str | None, op: str) -> str:
    if backend is not None:
        return backend
    chosen = getattr(module, BACKEND_ATTR, None)
    if chosen:
        return chosen
    from .state import get_state

    st = get_state(module)
    if st is not None:
        return st.backends.get(op, "auto")
    return "auto"


def _caller(module: torch.nn.Module, backend: str | None, call):
    """`call(op, *args, **kwargs)` runs an op for these hooks: the patching runtime's `call_op` when a
    patched module calls them, else a plain call on the chosen backend."""
    if call is not None:
        return call
    return lambda op, *args, **kwargs: op(*args, backend=_backend(module, backend, op.name), **kwargs)


# ---------------------------------------------------------------------------------------------
# experts


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts implementation with transformers' interface (`ALL_EXPERTS_FUNCTIONS`):
    hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H] in hidden's dtype."""
    if getattr(self, "has_bias", False) or getattr(self, "is_transposed", False):
        raise NotImplementedError("interns2_fast experts: biased or transposed expert weights are not supported")
    return ops.moe_experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj,
                           backend=_backend(self, None, "moe_experts"))


def register_experts_implementation(name: str = EXPERTS_IMPLEMENTATION) -> str:
    """Register `experts_forward` as transformers experts implementation `name` (library-wide, in
    `transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS`); returns the name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(name, experts_forward)
    return name


# ---------------------------------------------------------------------------------------------
# router


_ROUTER_RETURNS_PROBS: dict[type, bool] = {}


def _zero_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A stand-in of `module` for the class forward: the same attributes, every parameter and buffer
    replaced by real zeros on the CPU (children likewise), no hooks, no instance-level forward.
    The original is untouched; weights on `meta`, offloaded or never initialised are never read."""
    twin = object.__new__(type(module))
    twin.__dict__.update(module.__dict__)
    twin.__dict__.pop("forward", None)  # a patched or accelerate-hooked instance forward
    twin.__dict__.pop("_hf_hook", None)
    for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        if name in module.__dict__:
            twin.__dict__[name] = type(module.__dict__[name])()
    twin._parameters = {k: None if p is None else torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype), requires_grad=False)
                        for k, p in module._parameters.items()}
    twin._buffers = {k: None if b is None else torch.zeros(b.shape, dtype=b.dtype) for k, b in module._buffers.items()}
    twin._modules = {k: None if m is None else _zero_twin(m) for k, m in module._modules.items()}
    return twin


def _probe_router_class(router: torch.nn.Module) -> bool | None:
    """Run the router CLASS's forward on a zero-weight twin and one zero token: slot 0 is then exactly
    1/E for every expert if the class returns probabilities, exactly 0 if it returns logits.
    None when the run fails or shows neither (nothing is concluded from it)."""
    cls = type(router)
    w = router.weight
    E, H = w.shape
    try:
        with torch.no_grad():
            first = cls.forward(_zero_twin(router), torch.zeros(1, H, dtype=w.dtype))[0]
    except Exception:  # noqa: BLE001  (a router class this probe cannot run)
        return None
    if not isinstance(first, torch.Tensor) or first.device.type == "meta" or first.shape[-1] != E:
        return None
    first = first.detach().double().reshape(-1, E)
    if torch.equal(first, torch.zeros_like(first)):
        return False
    if torch.allclose(first, torch.full_like(first, 1.0 / E), rtol=1e-3, atol=0):
        return True
    return None


def router_semantics(router: torch.nn.Module, original=None) -> bool:
    """True when the installed router returns softmax probabilities (fp32) in its first slot
    (transformers 5.2), False when it returns the raw logits (later versions).

    Decided by behaviour, never from the instance's own weights: the router class's forward runs on
    a zero-weight CPU twin of the instance (`_zero_twin`) and one zero token, which gives exactly 1/E
    per expert for probabilities and exactly 0 for logits whatever the real weights are — on `meta`
    (`init_empty_weights`), offloaded or not loaded yet. Only such a definite answer is cached per
    class; when the probe cannot run or shows neither, logits are assumed for this call and nothing
    is cached (only `output_router_logits` reads slot 0). `original` is accepted for compatibility:
    the class forward is what is probed.
    """
    cls = type(router)
    if cls not in _ROUTER_RETURNS_PROBS:
        answer = _probe_router_class(router)
        if answer is None:
            return False
        _ROUTER_RETURNS_PROBS[cls] = answer
    return _ROUTER_RETURNS_PROBS[cls]


def router_forward(router: torch.nn.Module, hidden_states: torch.Tensor, *, backend: str | None = None,
                   slot0_is_probs: bool | None = None, call=None):
    """What the installed router's forward returns, computed by `ops.moe_route`:
    (probs fp32 | logits, top-k weights in that slot's dtype, top-k ids int64). A router with
    `norm_topk_prob=False` (a Qwen3-Next option) skips the renormalisation. `call(op, *args,
    **kwargs)`, when given, runs the op (the patching runtime passes its `call_op`)."""
    call = _caller(router, backend, call)
    hidden = hidden_states.reshape(-1, router.weight.shape[1])
    logits, weights, ids = call(ops.moe_route, hidden, router.weight, router.top_k,
                                renormalize=bool(getattr(router, "norm_topk_prob", True)))
    if slot0_is_probs is None:
        slot0_is_probs = router_semantics(router)
    first = torch.softmax(logits, dim=-1, dtype=torch.float32) if slot0_is_probs else logits
    return first, weights.to(first.dtype), ids


# ---------------------------------------------------------------------------------------------
# sparse-MoE block


_SILU_NAMES = ("SiLU", "SiLUActivation", "SiluActivation")


def _plain(module) -> bool:
    """No hooks and no instance-level forward (patched, accelerate-hooked): its class forward runs."""
    return isinstance(module, torch.nn.Module) and not (
        module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module))


def shared_expert_weights(block: torch.nn.Module):
    """(gate_proj, up_proj, down_proj, shared_expert_gate) weights when the block's shared expert is
    what `ops.moe_experts_shared` computes: an MLP with bias-free `gate_proj` / `up_proj` /
    `down_proj` Linears and a SiLU `act_fn`, a bias-free Linear(H -> 1) `shared_expert_gate`, none
    of them hooked or with a replaced forward. None otherwise (the block then calls the modules)."""
    shared, gate = getattr(block, "shared_expert", None), getattr(block, "shared_expert_gate", None)
    if shared is None or gate is None:
        return None
    lins = [getattr(shared, n, None) for n in ("gate_proj", "up_proj", "down_proj")] + [gate]
    if not all(_plain(m) for m in (shared, *lins)):
        return None
    if not all(isinstance(m, torch.nn.Linear) and m.bias is None for m in lins) or gate.out_features != 1:
        return None
    if type(getattr(shared, "act_fn", None)).__name__ not in _SILU_NAMES:
        return None
    return tuple(m.weight for m in lins)


def _router_runs_here(router: torch.nn.Module) -> bool:
    """True when the block may compute the routing itself with `ops.moe_route` (its first slot is
    then never computed: the block does not return it): the router has no hooks (transformers'
    `output_router_logits` recorder is one) and runs its class forward or interns2_fast's patched one."""
    if router._forward_hooks or router._forward_pre_hooks:
        return False
    fwd = vars(router).get("forward")
    if fwd is None:
        return True
    from .state import get_state

    st = get_state(router)
    return bool(getattr(fwd, "__interns2_fast__", False)) and st is not None and st.running_patched


def sparse_moe_block_forward(block: torch.nn.Module, hidden_states: torch.Tensor, *,
                             backend: str | None = None, call=None) -> torch.Tensor:
    """The sparse-MoE block: router -> experts (+ sigmoid-gated shared expert fused into the
    combine) -> [B, L, H], as the installed block's forward returns it. The router runs through
    `router_forward`, or as a module call when it carries forward hooks (transformers records
    `output_router_logits` with them) or a patched forward. An accelerate offload hook on the
    experts child is fired around the call, since their weights are read directly."""
    from .state import fire_offload_hooks

    call = _caller(block, backend, call)
    shape = hidden_states.shape
    x = hidden_states.reshape(-1, shape[-1])
    router = block.gate
    experts = block.experts
    shared_w = shared_expert_weights(block)
    plain_experts = not (getattr(experts, "has_bias", False) or getattr(experts, "is_transposed", False))
    if shared_w is not None and plain_experts:
        # The shared expert as one more slot of the expert GEMMs, its gate and the combine fused:
        # ONE op for router + experts + shared expert when the router's output is not observed
        # (its slot 0 is then never built), else the router module call + ONE experts op.
        fire_offload_hooks(block, ("experts",), pre=True)
        try:
            if _router_runs_here(router):
                out = call(ops.moe_sparse_block, x, router.weight, router.top_k,
                           bool(getattr(router, "norm_topk_prob", True)), experts.gate_up_proj, experts.down_proj,
                           *shared_w)
            else:
                _, weights, ids = router(x)  # hooked (e.g. output_router_logits) or replaced: the module call
                out = call(ops.moe_experts_shared, x, ids, weights, experts.gate_up_proj, experts.down_proj, *shared_w)
        finally:
            fire_offload_hooks(block, ("experts",), pre=False)
        return out.reshape(shape)
    if router._forward_hooks or router._forward_pre_hooks or "forward" in vars(router):
        _, weights, ids = router(x)  # hooked (e.g. output_router_logits) or patched: keep the module call
    else:
        _, weights, ids = router_forward(router, x, call=call)
    shared = getattr(block, "shared_expert", None)
    shared_out = shared(x) if shared is not None else None
    gate = getattr(block, "shared_expert_gate", None)
    shared_gate = gate(x) if (gate is not None and shared_out is not None) else None  # [T, 1] logits
    if getattr(experts, "has_bias", False) or getattr(experts, "is_transposed", False):
        out = experts(x, ids, weights)
        if shared_out is not None:
            out = out + (F.sigmoid(shared_gate) * shared_out if shared_gate is not None else shared_out)
        return out.reshape(shape)
    fire_offload_hooks(block, ("experts",), pre=True)
    try:
        out = call(ops.moe_experts, x, ids, weights, experts.gate_up_proj, experts.down_proj,
                   shared_expert_output=shared_out, shared_expert_gate=shared_gate)
    finally:
        fire_offload_hooks(block, ("experts",), pre=False)
    return out.reshape(shape)
