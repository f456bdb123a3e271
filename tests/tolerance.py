"""The one error metric the op tests share: RMS ratio and max-abs, computed in float64.

    rms ratio = rms(out - ref) / rms(ref)
    max-abs   = max |out - ref| / max_scale

`max_scale` is how a file states its max-abs tolerance: "abs" (plain max-abs), "ref" (relative to
max |ref|) or "ref_or_1" (relative to max(1, max |ref|): absolute for small values, relative for
large). Each test file keeps its own per-dtype tolerance table and says which it uses.
"""
import torch


def assert_close(out, ref, rms_tol: float, max_tol: float, what: str = "", *, max_scale: str = "abs") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    out, ref = out.detach().double(), ref.detach().double()
    err = out - ref
    rms = (err.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    ref_max = ref.abs().max().item()
    scale = {"abs": 1.0, "ref": max(ref_max, 1e-30), "ref_or_1": max(1.0, ref_max)}[max_scale]
    mx = err.abs().max().item() / scale
    assert rms <= rms_tol and mx <= max_tol, f"{what}: rms {rms:.2e} (tol {rms_tol}), max {mx:.2e} (tol {max_tol})"
