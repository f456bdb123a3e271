"""Per-instance patch state, forward installation and verify-mode plumbing.

Design: `patch()` replaces the `forward` of each matched module INSTANCE (an instance attribute
shadowing the class method; under accelerate's device hooks the hooked `_old_forward` slot is
replaced instead, so the hooks still move tensors between devices). No class, no module-level
function of transformers and no global is modified, so other models in the process are untouched
— on every transformers version, including 5.15+ where the fallbacks are module globals looked
up at call time: the patched forward never reaches those globals, it calls `interns2_fast.ops`.
`unpatch()` puts the previous slot content back (or deletes the instance attribute), after which
the module runs the unchanged transformers code: outputs are bit-identical to before patching.

Each patched module carries a `ModuleState` in `module._interns2_fast`; the patched forward reads
it on every call (so a second `patch()` just updates backends/verify settings in place).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

logger = logging.getLogger("interns2_fast")

STATE_ATTR = "_interns2_fast"

#: op families -> the op whose resolved backend the report names for that family
FAMILY_OPS = {
    "gdn": "chunk_gated_delta_rule",
    "conv": "causal_conv1d_fn",
    "norm": "rms_norm_gated",
    "moe": "moe_experts",
    "rmsnorm": "add_rms_norm",
}
FAMILIES = tuple(FAMILY_OPS)


class VerifyError(RuntimeError):
    """verify="strict": a patched module disagreed with the reference path beyond tolerance."""


@dataclasses.dataclass
class VerifyRecord:
    path: str
    op: str
    dtype: str
    rms_ratio: float
    max_abs: float
    ok: bool
    action: str  # "kept patched" | "reverted to reference" | "raised"


@dataclasses.dataclass
class ModuleState:
    path: str
    kind: str  # "gdn" | "norm" | "moe_block" | ...
    backends: dict[str, str]  # family -> requested backend ("auto", "torch", ...); "reference" when not patched
    original: Callable  # the forward that ran before patching (bound)
    slot: str  # "forward" or "_old_forward" (accelerate hooks)
    had_instance_attr: bool
    previous: Any
    verify: bool | str = False
    extra: dict = dataclasses.field(default_factory=dict)
    active: bool = True  # False once verify put the module back on the reference path
    suspended: int = 0  # > 0 inside reference_mode()
    verified: set = dataclasses.field(default_factory=set)  # ops / "module" already verified
    verify_log: list = dataclasses.field(default_factory=list)

    def backend(self, family: str) -> str:
        return self.backends.get(family, "reference")

    @property
    def running_patched(self) -> bool:
        return self.active and not self.suspended


def get_state(module: nn.Module) -> ModuleState | None:
    return module.__dict__.get(STATE_ATTR)


def patched_states(model: nn.Module) -> list[ModuleState]:
    return [s for s in (get_state(m) for m in model.modules()) if s is not None]


def _slot(module: nn.Module) -> str:
    # accelerate's add_hook_to_module stores the real forward in `_old_forward` and puts a wrapper that
    # moves inputs/outputs between devices in `forward`: replace the inner one, keep the wrapper.
    if getattr(module, "_hf_hook", None) is not None and "_old_forward" in module.__dict__:
        return "_old_forward"
    return "forward"


def install(module: nn.Module, state_kwargs: dict, impl: Callable) -> ModuleState:
    """Replace `module`'s forward by `impl(module, state, *args, **kwargs)` (or update an existing patch)."""
    existing = get_state(module)
    if existing is not None:
        existing.backends = state_kwargs["backends"]
        existing.verify = state_kwargs.get("verify", False)
        existing.extra.update(state_kwargs.get("extra", {}))
        return existing
    slot = _slot(module)
    had = slot in module.__dict__
    previous = module.__dict__.get(slot)
    original = getattr(module, slot)
    state = ModuleState(original=original, slot=slot, had_instance_attr=had, previous=previous, **state_kwargs)

    @functools.wraps(getattr(type(module).forward, "__wrapped__", type(module).forward))
    def forward(*args, **kwargs):
        st = module.__dict__.get(STATE_ATTR)
        if st is None or not st.running_patched:
            return original(*args, **kwargs)
        return impl(module, st, *args, **kwargs)

    forward.__interns2_fast__ = True
    module.__dict__[STATE_ATTR] = state
    object.__setattr__(module, slot, forward)
    return state


def uninstall(module: nn.Module) -> bool:
    state = get_state(module)
    if state is None:
        return False
    if state.had_instance_attr:
        object.__setattr__(module, state.slot, state.previous)
    else:
        module.__dict__.pop(state.slot, None)
    del module.__dict__[STATE_ATTR]
    return True


@contextlib.contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """Inside this block every patched module of `model` runs its original (transformers) forward."""
    states = patched_states(model)
    for s in states:
        s.suspended += 1
    try:
        yield
    finally:
        for s in states:
            s.suspended -= 1


# --- verify mode ---------------------------------------------------------------------------------

def _float_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _float_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _float_tensors(o)]
    return []


def input_dtype(*args) -> torch.dtype | None:
    """The least precise floating dtype among the tensors in `args` (what the op computed from)."""
    from ..numerics import _PRECISION

    dtypes = [t.dtype for t in _float_tensors(list(args))]
    return max(dtypes, key=lambda d: _PRECISION.get(d, 1)) if dtypes else None


def verify_outputs(state: ModuleState, op: str, patched, reference, dtype: torch.dtype | None = None) -> bool:
    """Compare every floating tensor of `patched` with `reference`; log it; act on a failure.

    Returns True when within tolerance. On a failure the module is put back on the reference path
    (verify=True: with a warning) or VerifyError is raised (verify="strict").
    """
    from ..numerics import compare_tensors

    got, want = _float_tensors(patched), _float_tensors(reference)
    ok, worst_rms, worst_abs, judged = True, 0.0, 0.0, "n/a"
    if len(got) != len(want):
        ok = False
    for a, b in zip(got, want):
        if a.shape != b.shape:
            ok = False
            continue
        c = compare_tensors(a, b, dtype=dtype)
        ok &= c.ok
        worst_rms, worst_abs, judged = max(worst_rms, c.rms_ratio), max(worst_abs, c.max_abs), c.dtype
    action = "kept patched" if ok else ("raised" if state.verify == "strict" else "reverted to reference")
    state.verify_log.append(VerifyRecord(state.path, op, judged, worst_rms, worst_abs, ok, action))
    if not ok:
        state.active = False
        msg = (f"interns2_fast verify: {state.path} ({op}) differs from the reference path beyond tolerance "
               f"(rms ratio {worst_rms:.3g}, max |diff| {worst_abs:.3g}, judged as {judged})")
        if state.verify == "strict":
            raise VerifyError(msg)
        warnings.warn(msg + "; this module is back on the reference path", RuntimeWarning, stacklevel=3)
    return ok


def verified_module_call(module: nn.Module, state: ModuleState, patched_fn: Callable, *args, **kwargs):
    """For stateless modules (norm, MoE): on the first call run the original forward beside the patched
    one and compare; return the patched output when it agrees, else the reference output."""
    if not state.verify or "module" in state.verified:
        return patched_fn(module, *args, **kwargs)
    state.verified.add("module")
    # the reference path is the original forward with every patched child on its original forward too
    # and it is a shadow computation: the children's forward hooks (e.g. transformers' output_router_logits
    # recorder) must not see it, or they would record the first call twice.
    children = [s for s in (get_state(m) for m in module.modules()) if s is not None and s is not state]
    hooked = [(m, m._forward_hooks) for m in module.modules() if m is not module and m._forward_hooks]
    for s in children:
        s.suspended += 1
    for m, _ in hooked:
        m._forward_hooks = type(m._forward_hooks)()
    try:
        reference = state.original(*args, **kwargs)
    finally:
        for s in children:
            s.suspended -= 1
        for m, hooks in hooked:
            m._forward_hooks = hooks
    patched = patched_fn(module, *args, **kwargs)
    ok = verify_outputs(state, state.kind, patched, reference, dtype=input_dtype(args, kwargs))
    return patched if ok else reference
