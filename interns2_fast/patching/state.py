"""The patching runtime: per-instance state, forward installation, op calls, verify mode, recording.

Design: `patch()` replaces the `forward` of each matched module INSTANCE (an instance attribute
shadowing the class method; under accelerate's device hooks the hooked `_old_forward` slot is
replaced instead, so the hooks still move tensors between devices). No class, no module-level
function of transformers and no global is modified, so other models in the process are untouched
— on every transformers version, including 5.15+ where the fallbacks are module globals looked
up at call time: the patched forward never reaches those globals, it calls `interns2_fast.ops`.
`unpatch()` puts the previous slot content back (or deletes the instance attribute), after which
the module runs the unchanged transformers code: outputs are bit-identical to before patching.

The installed forward is a `PatchedForward` object, not a closure: it holds the module and a
module-level function, so `copy.deepcopy(model)` rebinds it to the copy (the copy computes with its
own weights) and `torch.save(model)` / pickle store it by reference. Each patched module carries a
`ModuleState` in `module._interns2_fast`; the forward reads it on every call (so a second `patch()`
just updates backends/verify settings in place).

Every op call of a patched forward goes through `call_op(state, family, op, ...)`: the backend the
patch chose for that op, verify mode on the first call (the in-place arguments it clones come from
the op's declared mutation), and `record_ops()` for the demo's per-op timing.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import types
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

logger = logging.getLogger("interns2_fast")

STATE_ATTR = "_interns2_fast"

#: op families (what `patch(ops=...)` names) -> the ops their patched forwards call
FAMILY_OPS = {
    "gdn": ("gdn_gating", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule_with_gating"),
    "conv": ("causal_conv1d_fn", "causal_conv1d_update"),
    "norm": ("rms_norm_gated",),
    "moe": ("moe_route", "moe_experts",
            "moe_experts_shared", "moe_sparse_block"),
    "rmsnorm": ("add_rms_norm",),
    "attention": ("attention_prologue", "decode_attention"),
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
    reason: str = ""  # why it failed: "beyond tolerance", "raised ...", "dtype ...", "shape ..."


@dataclasses.dataclass
class ModuleState:
    module: nn.Module  # the patched instance (deepcopy / pickle map it to the copy)
    path: str
    kind: str  # "gdn" | "norm" | "moe_router" | "moe_block"
    backends: dict[str, str]  # op name -> backend passed to it ("auto", "torch", ...); missing: "reference"
    slot: str  # "forward" or "_old_forward" (accelerate hooks)
    had_instance_attr: bool
    previous: Any  # the slot's instance attribute before patching (None: the class forward)
    verify: bool | str = False
    extra: dict = dataclasses.field(default_factory=dict)
    active: bool = True  # False once verify put the module back on the reference path
    suspended: int = 0  # > 0 inside reference_mode()
    verified: set = dataclasses.field(default_factory=set)  # ops / "module" already verified
    verify_log: list = dataclasses.field(default_factory=list)

    def backend(self, op: str) -> str:
        return self.backends.get(op, "reference")

    @property
    def original(self) -> Callable:
        """The forward that ran before patching."""
        if self.previous is not None:
            return self.previous
        return types.MethodType(type(self.module).forward, self.module)

    @property
    def running_patched(self) -> bool:
        return self.active and not self.suspended


class PatchedForward:
    """What `patch()` installs as a module's forward: `impl(module, state, *args, **kwargs)`, or the
    original forward while the module is suspended / reverted / unpatched."""

    __interns2_fast__ = True

    def __init__(self, module: nn.Module, impl: Callable):
        self.module = module
        self.impl = impl  # a module-level function: pickled by reference

    def __call__(self, *args, **kwargs):
        st = self.module.__dict__.get(STATE_ATTR)
        if st is None or not st.running_patched:
            original = st.original if st is not None else type(self.module).forward.__get__(self.module)
            return original(*args, **kwargs)
        return self.impl(self.module, st, *args, **kwargs)

    @property
    def __wrapped__(self):  # inspect.signature(module.forward) shows the original's signature
        return type(self.module).forward


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


def _previous(module: nn.Module, slot: str):
    prev = module.__dict__.get(slot)
    # accelerate keeps the class forward bound to the module: store it as "the class forward", so that
    # deepcopy / pickle never carry a bound method that unpickling would resolve to the hook wrapper
    if isinstance(prev, types.MethodType) and prev.__self__ is module and \
            prev.__func__ is type(module).forward:
        return None
    return prev


def install(module: nn.Module, state_kwargs: dict, impl: Callable) -> ModuleState:
    """Replace `module`'s forward by `impl(module, state, *args, **kwargs)` (or update an existing patch)."""
    existing = get_state(module)
    if existing is not None:
        existing.backends = state_kwargs["backends"]
        existing.verify = state_kwargs.get("verify", False)
        existing.extra.update(state_kwargs.get("extra", {}))
        return existing
    slot = _slot(module)
    state = ModuleState(module=module, slot=slot, had_instance_attr=slot in module.__dict__,
                        previous=_previous(module, slot), **state_kwargs)
    module.__dict__[STATE_ATTR] = state
    object.__setattr__(module, slot, PatchedForward(module, impl))
    return state


def uninstall(module: nn.Module) -> bool:
    state = get_state(module)
    if state is None:
        return False
    on_uninstall = state.extra.get("on_uninstall")  # e.g. patching/projections.py: unfuse the weights
    if on_uninstall is not None:
        on_uninstall(module)
    if state.had_instance_attr:
        prev = state.previous if state.previous is not None else types.MethodType(type(module).forward, module)
        object.__setattr__(module, state.slot, prev)
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
    from ..compare import _PRECISION

    dtypes = [t.dtype for t in _float_tensors(list(args))]
    return max(dtypes, key=lambda d: _PRECISION.get(d, 1)) if dtypes else None


def verify_outputs(state: ModuleState, op: str, patched, reference, dtype: torch.dtype | None = None,
                   error: BaseException | None = None) -> bool:
    """Compare every floating tensor of `patched` with `reference`; log it; act on a failure.

    Returns True when within tolerance. A failure is a value beyond tolerance, a tensor of another
    dtype or shape, a different number of tensors, or `error` (the patched call raised it). On a
    failure the module is put back on the reference path (verify=True: with a warning) or
    VerifyError is raised (verify="strict").
    """
    from ..compare import compare_tensors

    ok, worst_rms, worst_abs, judged, reasons = True, 0.0, 0.0, "n/a", []
    if error is not None:
        ok, worst_rms, worst_abs = False, float("inf"), float("inf")
        reasons.append(f"raised {type(error).__name__}: {error}")
    else:
        got, want = _float_tensors(patched), _float_tensors(reference)
        if len(got) != len(want):
            ok = False
            reasons.append(f"returned {len(got)} floating tensors where the reference path returns {len(want)}")
        for a, b in zip(got, want):
            if a.shape != b.shape:
                ok = False
                reasons.append(f"shape {list(a.shape)} where the reference path returns {list(b.shape)}")
                continue
            if a.dtype != b.dtype:
                ok = False
                reasons.append(f"dtype {str(a.dtype).replace('torch.', '')} where the reference path returns "
                               f"{str(b.dtype).replace('torch.', '')}")
            c = compare_tensors(a, b, dtype=dtype)
            if not c.ok:
                ok = False
                reasons.append("beyond tolerance")
            worst_rms, worst_abs, judged = max(worst_rms, c.rms_ratio), max(worst_abs, c.max_abs), c.dtype
    action = "kept patched" if ok else ("raised" if state.verify == "strict" else "reverted to reference")
    reason = "; ".join(dict.fromkeys(reasons))
    state.verify_log.append(VerifyRecord(state.path, op, judged, worst_rms, worst_abs, ok, action, reason))
    if not ok:
        state.active = False
        if error is not None:
            msg = f"interns2_fast verify: {state.path} ({op}) {reason}"
        else:
            msg = (f"interns2_fast verify: {state.path} ({op}) differs from the reference path: {reason} "
                   f"(rms ratio {worst_rms:.3g}, max |diff| {worst_abs:.3g}, judged as {judged})")
        if state.verify == "strict":
            raise VerifyError(msg) from error
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
    error = None
    try:
        patched = patched_fn(module, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (a backend that raises is a verify failure like a wrong value)
        patched, error = None, exc
    ok = verify_outputs(state, state.kind, patched, reference, dtype=input_dtype(args, kwargs), error=error)
    return patched if ok else reference


# --- op calls of patched forwards -----------------------------------------------------------------

def trains(module: nn.Module) -> bool:
    """A module in training mode runs the differentiable reference path (the ops have no backward
    kernels), with grad enabled or not: reentrant gradient checkpointing runs a layer's first forward
    under no_grad and its recomputation with grad, and both must take the same path (same values,
    same saved tensors). The path must therefore never depend on the grad mode alone in training."""
    return module.training


#: when set (a dict), every op call of a patched module records its first call per (op, phase) here:
#: the demo times the ops on the shapes a real forward produced.
OP_RECORDER: contextvars.ContextVar[dict | None] = contextvars.ContextVar("interns2_fast_op_recorder", default=None)

#: tokens per sequence of the layer call in progress (the gating and the norm cannot tell it from shapes)
PHASE_TOKENS: contextvars.ContextVar[int | None] = contextvars.ContextVar("interns2_fast_phase", default=None)


@contextlib.contextmanager
def record_ops():
    """Capture the first call of each (op, phase) made by patched modules:
    {(op name, phase): (family, op, args, kwargs, backend)}."""
    calls: dict = {}
    token = OP_RECORDER.set(calls)
    try:
        yield calls
    finally:
        OP_RECORDER.reset(token)


@contextlib.contextmanager
def phase(tokens: int) -> Iterator[None]:
    """Inside a patched layer's forward: the ops it calls run for `tokens` tokens per sequence."""
    if torch.compiler.is_compiling() or OP_RECORDER.get() is None:
        yield
        return
    token = PHASE_TOKENS.set(tokens)
    try:
        yield
    finally:
        PHASE_TOKENS.reset(token)


def record_call(family: str, op, args, kwargs, backend: str, tokens: int | None = None) -> None:
    """Inside `record_ops()`: keep the first call of each (op, phase) for timing it later."""
    rec = OP_RECORDER.get()
    if rec is None:
        return
    if tokens is None:
        tokens = PHASE_TOKENS.get()
    if tokens is None:
        tokens = _seq_len(op.name, args[0]) if args and isinstance(args[0], torch.Tensor) else -1
    rec.setdefault((op.name, "decode" if tokens == 1 else "prefill"), (family, op, args, kwargs, backend))


def _seq_len(name: str, x: torch.Tensor) -> int:
    # conv ops take [B, D, T]; GDN ops [B, T, H, K]; the norm [N, V] (not phase-split)
    if name.startswith("causal_conv1d"):
        return x.shape[-1]
    if x.dim() == 4:
        return x.shape[1]
    return -1


def clone_mutated(op, args: tuple, kwargs: dict) -> tuple[tuple, dict, dict]:
    """Copies of a call's arguments with the tensors the op mutates (its schema's `(a!)`) cloned:
    (args, kwargs, {name: clone})."""
    names = op.arg_names
    args, kwargs, clones = list(args), dict(kwargs), {}
    for name in op.mutates:
        i = names.index(name)
        if i < len(args) and isinstance(args[i], torch.Tensor):
            clones[name] = args[i] = args[i].clone()
        elif isinstance(kwargs.get(name), torch.Tensor):
            clones[name] = kwargs[name] = kwargs[name].clone()
    return tuple(args), kwargs, clones


def _mutated_originals(op, args, kwargs, names) -> dict:
    out = {}
    for name in names:
        i = op.arg_names.index(name)
        out[name] = args[i] if i < len(args) else kwargs[name]
    return out


def call_op(state: ModuleState, family: str, op, *args, **kwargs):
    """Run `op` (an `interns2_fast.ops` op) for a patched module, on the backend the patch chose.

    A module in training mode (`trains`) runs the reference backend, without verify.

    verify mode: the first call of each op in this module also runs the reference backend (on
    copies of the arguments the op mutates) and compares outputs and updated states; beyond
    tolerance — or when the patched backend raises or returns another dtype/shape — the reference
    results are used (copied into the mutated arguments) and the module goes back to the reference
    path after this call.
    """
    training = trains(state.module)
    backend = "reference" if training else state.backend(op.name)
    if not torch.compiler.is_compiling():
        record_call(family, op, args, kwargs, backend)
    # training, or verify rejected an op earlier in this very call (finish it on the reference path)
    if not state.active or training:
        return op(*args, backend="reference", **kwargs)
    if not state.verify or op.name in state.verified:
        return op(*args, backend=backend, **kwargs)
    state.verified.add(op.name)
    r_args, r_kwargs, clones = clone_mutated(op, args, kwargs)
    reference = op(*r_args, backend="reference", **r_kwargs)
    originals = _mutated_originals(op, args, kwargs, clones)
    error = None
    try:
        patched = op(*args, backend=backend, **kwargs)
    except Exception as exc:  # noqa: BLE001  (a backend that raises is a verify failure like a wrong value)
        patched, error = None, exc
    got = [patched, *originals.values()]
    want = [reference, *clones.values()]
    if verify_outputs(state, op.name, got, want, dtype=input_dtype(args, kwargs), error=error):
        return patched
    for name, clone in clones.items():
        originals[name].copy_(clone)
    # results that alias a clone (an in-place final state) must alias the caller's tensor instead
    swap = {id(c): originals[n] for n, c in clones.items()}
    if not isinstance(reference, tuple):
        return swap.get(id(reference), reference)
    items = [swap.get(id(r), r) for r in reference]
    return type(reference)(*items) if hasattr(reference, "_fields") else tuple(items)  # RoutingPlan is a NamedTuple


def fire_offload_hooks(module: nn.Module, names, pre: bool) -> None:
    """accelerate's offload hooks of children whose weights a patched forward reads directly (not
    through the child's forward) must run around the forward: pre_forward loads, post_forward offloads."""
    for name in names:
        child = getattr(module, name, None)
        hook = getattr(child, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(child) if pre else hook.post_forward(child, None)
