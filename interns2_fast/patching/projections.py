"""The input projections of a Gated DeltaNet layer as one GEMM, on weights re-viewed into one buffer.

At patch time (`fuse`) the projection weights of a linear-attention layer — qwen3_5 / Intern-S2:
`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`; qwen3_next: `in_proj_qkvz`, `in_proj_ba` — are
copied into one [sum_out, H] buffer and each module's `weight` Parameter is made a view of its rows
(`param.data = buffer[rows]`: the Parameter objects stay the same, so optimizers, state_dict keys
and values and anything holding a parameter keep working; the old storages are freed). Biases, when
every projection has one, are fused the same way. The patched forward (`fused_linear`) then runs one
`F.linear` on the buffer and hands out column slices of its output (views, no copies).

The buffer is found again on every eager call from the weights themselves: the call checks that the
weights are still adjacent rows of one storage. A `copy.deepcopy` (Parameters deep-copy by cloning),
`model.to(...)`, `model.half()`, pickling or a `param.data = ...` from elsewhere separates them; the
next eager no-grad call (not under inference_mode, whose tensors could not serve training later)
then re-views them into a new buffer (same checks as at patch time), or,
where that is not possible, runs the separate GEMMs — never a wrong result. Under torch.compile the
answer of the last eager check (True after patching) is used.

Training: in training mode (grad enabled or not: a checkpointed recomputation must take the path of
the first forward, which reentrant checkpointing runs under no_grad), or when grad is enabled and a
projection weight requires grad, the separate GEMMs run (each on its own Parameter, a view of the
buffer): the weight gradients are then exactly those of the unpatched model. The one GEMM serves
inference (eval mode under no_grad / inference_mode, or frozen weights).

Not fused (the layer keeps its separate GEMMs; the reason is in the module state's
`extra["projections_note"]`): weights on the meta device (patch(meta_model); patch again after
loading the weights to fuse them), on different devices or of different dtypes, projections that
carry accelerate hooks (offload / device_map placement moves their weights), some but not all with
a bias, or a projection that is not a plain 2-D weight linear.

`state_dict()` hands out each fused projection weight (and bias) as a copy with its own storage
(a state-dict post-hook of the layer, `own_storage`; `keep_vars=True` still gets the Parameters):
what reads a state dict — transformers' tied-weights check and `save_pretrained`, safetensors —
sees no storage shared between the projections, which are distinct weights, not tied ones. The
copies cost the projections' bytes for as long as the state dict lives.

`unfuse` (run by `unpatch()` through the module state's `on_uninstall`) gives every projection
Parameter back its own contiguous storage with the same values: no shared storage remains (so
safetensors can save the model), and removes the state-dict hook.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .state import STATE_ATTR, trains

#: set False to keep the separate projection GEMMs (patch() then leaves the weights alone)
FUSE_PROJECTIONS = True

LAYOUT_PROJECTIONS = {
    "qwen3_5": ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"),
    "qwen3_next": ("in_proj_qkvz", "in_proj_ba"),
}


@dataclasses.dataclass
class FusedProjections:
    names: tuple[str, ...]
    sizes: tuple[int, ...]  # output features of each projection, in buffer order
    has_bias: bool
    layout: str = "qwen3_5"
    ok: bool = True  # what the last eager check found (used while compiling)
    #: the weights' (and biases') identity, address and layout when they were last found to be views of one
    #: buffer: the same key again means the same views (a new check costs microseconds per call)
    checked: tuple | None = dataclasses.field(default=None, compare=False)


def _linears(module: nn.Module, names) -> list[nn.Module] | str:
    mods = [getattr(module, n, None) for n in names]
    for n, m in zip(names, mods):
        if not isinstance(m, nn.Module) or not isinstance(getattr(m, "weight", None), torch.Tensor) \
                or m.weight.dim() != 2 or type(m).forward is not nn.Linear.forward:
            return f"{n} is not a plain linear layer"
        if getattr(m, "_hf_hook", None) is not None or m._forward_hooks or m._forward_pre_hooks:
            return f"{n} carries hooks (accelerate offload / device placement); its weight stays where it is"
    return mods


def fuse(module: nn.Module, layout: str) -> dict:
    """Re-view the layer's projection weights into one buffer. Returns the module-state extras:
    {"projections": FusedProjections | None, "projections_note": why not fused, "on_uninstall": unfuse}."""
    names = LAYOUT_PROJECTIONS.get(layout)
    if names is None or not FUSE_PROJECTIONS:
        return {"projections": None, "projections_note": "projection fusion is off", "on_uninstall": unfuse}
    mods = _linears(module, names)
    if isinstance(mods, str):
        return {"projections": None, "projections_note": mods, "on_uninstall": unfuse}
    ws = [m.weight for m in mods]
    bs = [m.bias for m in mods]
    has_bias = bs[0] is not None
    H = ws[0].shape[1]
    why = None
    if any(w.device.type == "meta" for w in ws):
        why = "weights on the meta device (patch again once they are loaded)"
    elif len({w.device for w in ws}) > 1:
        why = "projection weights on different devices"
    elif len({w.dtype for w in ws}) > 1 or any(not w.is_floating_point() for w in ws):
        why = "projection weights of different dtypes"
    elif any(w.shape[1] != H for w in ws):
        why = "projection weights of different input widths"
    elif any((b is not None) != has_bias for b in bs):
        why = "some projections have a bias and some do not"
    elif has_bias and any(b.dim() != 1 or b.dtype != ws[0].dtype or b.device != ws[0].device for b in bs):
        why = "projection biases of another dtype / device than the weights"
    if why is not None:
        return {"projections": None, "projections_note": why, "on_uninstall": unfuse}
    info = FusedProjections(tuple(names), tuple(int(w.shape[0]) for w in ws), has_bias, layout)
    if not _views_of_one_buffer(mods, info):  # else already fused (a second patch() call)
        with torch.no_grad():
            _rebase([m.weight for m in mods], (sum(info.sizes), H))
            if has_bias:
                _rebase([m.bias for m in mods], (sum(info.sizes),))
    if not any(h is own_storage for h in module._state_dict_hooks.values()):
        module.register_state_dict_post_hook(own_storage)
    return {"projections": info, "projections_note": "", "on_uninstall": unfuse}


def _rebase(params: list[torch.Tensor], shape) -> None:
    """Copy `params` (row blocks, in order) into one new buffer and make each a view of its rows."""
    buf = torch.empty(shape, dtype=params[0].dtype, device=params[0].device)
    row = 0
    for p in params:
        n = p.shape[0]
        buf[row:row + n].copy_(p)
        p.data = buf[row:row + n]
        row += n


def _adjacent(ts: list[torch.Tensor]) -> bool:
    """The tensors are contiguous, consecutive blocks of one storage (in order)."""
    first = ts[0]
    if first.device.type == "meta" or not all(t.is_contiguous() for t in ts):
        return False
    base = first.untyped_storage().data_ptr()
    end = first.storage_offset()
    for t in ts:
        if t.dtype != first.dtype or t.device != first.device or t.untyped_storage().data_ptr() != base \
                or t.storage_offset() != end:
            return False
        end += t.numel()
    return end * first.element_size() <= first.untyped_storage().nbytes()


def _views_of_one_buffer(mods, info: FusedProjections) -> bool:
    ok = _adjacent([m.weight for m in mods]) and (not info.has_bias or _adjacent([m.bias for m in mods]))
    return ok and len({m.weight.shape[1] for m in mods}) == 1


def _layout_key(mods, info: FusedProjections) -> tuple:
    ts = [m.weight for m in mods] + ([m.bias for m in mods] if info.has_bias else [])
    return tuple((id(t), t.data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype, t.device) for t in ts)


def fused_linear(module: nn.Module, info: FusedProjections | None, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(out_0, out_1, ...) = each projection applied to x: one GEMM on the buffer when the weights are
    still views of it (the outputs are then column slices of one result), else one GEMM each."""
    mods = [getattr(module, n) for n in info.names] if info is not None else None
    if mods is None or trains(module) or (torch.is_grad_enabled() and any(m.weight.requires_grad for m in mods)):
        return tuple(m(x) for m in mods) if mods is not None else None
    if not torch.compiler.is_compiling():
        key = _layout_key(mods, info)
        if key != info.checked:
            info.ok = _views_of_one_buffer(mods, info)
            info.checked = key if info.ok else None
        if not info.ok and not torch.is_inference_mode_enabled() \
                and isinstance(fuse(module, info.layout).get("projections"), FusedProjections):
            info.ok = _views_of_one_buffer(mods, info)  # fused again (a deepcopy, model.to(...))
    if not info.ok:
        return tuple(m(x) for m in mods)
    w0 = mods[0].weight
    N, H = sum(info.sizes), w0.shape[1]
    weight = w0.as_strided((N, H), (H, 1))
    bias = mods[0].bias.as_strided((N,), (1,)) if info.has_bias else None
    return F.linear(x, weight, bias).split_with_sizes(info.sizes, dim=-1)


def _in_larger_storage(t) -> bool:
    """`t` is a view into a storage that holds more than `t` (the fused buffer)."""
    return isinstance(t, torch.Tensor) and t.device.type != "meta" and \
        t.untyped_storage().nbytes() > t.numel() * t.element_size()


def _projection_names(module: nn.Module):
    st = module.__dict__.get(STATE_ATTR)
    return LAYOUT_PROJECTIONS.get(st.extra.get("layout"), ()) if st is not None else ()


def own_storage(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook of a layer with fused projections: each projection weight / bias that is a
    view of the fused buffer goes into the state dict as a contiguous copy (Parameters, which
    `keep_vars=True` asks for, stay as they are)."""
    for n in _projection_names(module):
        for leaf in ("weight", "bias"):
            key = f"{prefix}{n}.{leaf}"
            t = state_dict.get(key)
            if not isinstance(t, nn.Parameter) and _in_larger_storage(t):
                state_dict[key] = t.clone(memory_format=torch.contiguous_format)


def unfuse(module: nn.Module) -> None:
    """Give every projection Parameter that is a view into a larger storage (the fused buffer) its own
    contiguous storage: same values, same Parameter objects, no storage shared any more; remove the
    state-dict hook."""
    with torch.no_grad():
        for n in _projection_names(module):
            m = getattr(module, n, None)
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if _in_larger_storage(p):
                    p.data = p.data.clone(memory_format=torch.contiguous_format)
    for key in [k for k, h in module._state_dict_hooks.items() if h is own_storage]:
        del module._state_dict_hooks[key]
