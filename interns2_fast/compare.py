"""Tensor comparison and its tolerances (a leaf module: verify mode, check() and tests use it).

`compare_tensors(out, ref)` — RMS ratio rms(out - ref) / rms(ref) and max |out - ref|, judged
against `VERIFY_TOLERANCES` for the dtype.
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


_PRECISION = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}


def compare_tensors(out: torch.Tensor, ref: torch.Tensor, *, dtype: torch.dtype | None = None) -> Comparison:
    """RMS ratio and max-abs of `out` vs `ref` (computed in fp64), judged for `ref`'s dtype, or for
    `dtype` when that is less precise (an fp32 result computed from bf16 inputs is judged as bf16)."""
    if dtype is not None and _PRECISION.get(dtype, 1) > _PRECISION.get(ref.dtype, 1):
        judge = dtype
    else:
        judge = ref.dtype
    a, b = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    finite = bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all())
    diff = a - b
    name = str(judge).replace("torch.", "")
    if diff.numel() == 0:
        return Comparison(0.0, 0.0, name, True)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    rms_ref = b.pow(2).mean().sqrt().item()
    rms_diff = diff.pow(2).mean().sqrt().item()
    rms_ratio = rms_diff / rms_ref if rms_ref > 0 else (0.0 if rms_diff == 0 else float("inf"))
    max_abs = diff.abs().max().item()
    scale = max(1.0, b.abs().max().item())
    tol_rms, tol_abs = VERIFY_TOLERANCES.get(judge, VERIFY_TOLERANCES[torch.float32])
    ok = finite and rms_ratio <= tol_rms and max_abs <= tol_abs * scale
    return Comparison(rms_ratio, max_abs, name, ok)
