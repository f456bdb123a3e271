"""Numerics: compare the patched path with the reference path.

* `compare_tensors(out, ref)` — RMS ratio rms(out - ref) / rms(ref) and max |out - ref|, judged
  against `VERIFY_TOLERANCES` for the dtype (what verify mode uses);
* `check(model, inputs, top_k=10)` — the reference path and the patched path on the same prompts:
  per prompt the top-k next tokens side by side, plus top-1 agreement, max |Δp|, KL divergence and
  max |Δlogit| over all positions (`NumericsReport`, rendered as Markdown or rich tables).
"""
from __future__ import annotations

import dataclasses

import torch

#: dtype -> (max RMS ratio, max |diff| relative to max(1, max |ref|)). Beyond either: not OK.
VERIFY_TOLERANCES = {
    torch.float32: (2e-3, 1e-2),
    torch.float64: (1e-6, 1e-5),
    torch.bfloat16: (4e-2, 1.5e-1),
    torch.float16: (2e-2, 8e-2),
}


@dataclasses.dataclass
class Comparison:
    rms_ratio: float
    max_abs: float
    dtype: str
    ok: bool


def compare_tensors(out: torch.Tensor, ref: torch.Tensor) -> Comparison:
    """RMS ratio and max-abs of `out` vs `ref` (computed in fp64), judged for `ref`'s dtype."""
    a, b = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    finite = bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all())
    diff = a - b
    if diff.numel() == 0:
        return Comparison(0.0, 0.0, str(ref.dtype).replace("torch.", ""), True)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    rms_ref = b.pow(2).mean().sqrt().item()
    rms_diff = diff.pow(2).mean().sqrt().item()
    rms_ratio = rms_diff / rms_ref if rms_ref > 0 else (0.0 if rms_diff == 0 else float("inf"))
    max_abs = diff.abs().max().item()
    scale = max(1.0, b.abs().max().item())
    tol_rms, tol_abs = VERIFY_TOLERANCES.get(ref.dtype, VERIFY_TOLERANCES[torch.float32])
    ok = finite and rms_ratio <= tol_rms and max_abs <= tol_abs * scale
    return Comparison(rms_ratio, max_abs, str(ref.dtype).replace("torch.", ""), ok)


#: profiler events that mean the host waited for the device (a value read back, or a data-dependent shape)
HOST_SYNC_EVENTS = frozenset({
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::masked_select",
    "aten::_assert_async", "aten::bincount",
})


def count_host_syncs(fn, *args, **kwargs) -> tuple[dict[str, int], object]:
    """Run `fn(*args, **kwargs)` under torch.profiler (CPU activity) and count the aten events that force
    a device -> host synchronisation on an accelerator (`HOST_SYNC_EVENTS`). Works on the CPU: the
    events are recorded whatever the device. Returns ({event name: count}, fn's result)."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn(*args, **kwargs)
    counts = Counter(e.name for e in prof.events() if e.name in HOST_SYNC_EVENTS)
    return dict(counts), result
