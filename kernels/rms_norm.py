"""Residual add + RMSNorm with (1 + w) scaling (Qwen3.5's decoder norm), rows of any width N:

    s   = (residual + x).to(dtype)                                   # the decoder layer's add
    out = (s_fp32 * rsqrt(mean(s_fp32^2) + eps) * (1 + w_fp32)).to(dtype)

One kernel, `_add_rms_norm_kernel`: vector-only, persistent grid of vector-core size, one task
per BLOCK_M rows. Rows up to MAX_BLOCK_N wide are one masked [BLOCK_M, BLOCK_N] tile
(BLOCK_N = next power of two >= N); wider rows are walked in BLOCK_N-column chunks twice (sum of
squares, then normalise; the second pass re-reads x and residual rather than the stored sum, so
no program reads what it wrote). The new residual s is stored when a residual was given
(residual None: x itself is the new residual and nothing is stored). The last axis must be
stride 1 (the launcher copies otherwise); rows have their own strides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, interpreting, persistent_grid

from . import LoweringConfig
from .rounding import round_to

#: widest row kept in one tile; wider rows loop over chunks of this many columns
MAX_BLOCK_N = 2048
#: elements per tile (rows x padded width): one 2048-wide row of the model, 16 rows of 128
TILE_ELEMENTS = 2048


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, res_ptr,
    M, N, num_tasks, sxm, srm, som, sresm, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RES: tl.constexpr, ONE_TILE: tl.constexpr,
    EMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    s_ty = out_ptr.dtype.element_ty
    cols0 = tl.arange(0, BLOCK_N)
    for task in range(pid, num_tasks, nprog):
        rows = task * BLOCK_M + tl.arange(0, BLOCK_M)
        r64 = tl.cast(rows, tl.int64)
        m_r = rows < M
        if ONE_TILE:
            m_n = cols0 < N
            m = m_r[:, None] & m_n[None, :]
            s = tl.load(x_ptr + r64[:, None] * sxm + cols0[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_RES:
                r = tl.load(r_ptr + r64[:, None] * srm + cols0[None, :], mask=m, other=0.0).to(tl.float32)
                s = round_to(s + r, s_ty, EMULATE)
                tl.store(res_ptr + r64[:, None] * sresm + cols0[None, :], s.to(s_ty), mask=m)
            rstd = tl.rsqrt(tl.sum(s * s, 1) / N + eps)
            w1 = 1.0 + tl.load(w_ptr + cols0, mask=m_n, other=0.0).to(tl.float32)
            out = (s * rstd[:, None]) * w1[None, :]
            tl.store(out_ptr + r64[:, None] * som + cols0[None, :], round_to(out, s_ty, EMULATE).to(s_ty), mask=m)
        else:
            ss = tl.zeros([BLOCK_M], dtype=tl.float32)
            for c0 in range(0, N, BLOCK_N):
                cols = c0 + cols0
                m = m_r[:, None] & (cols < N)[None, :]
                s = tl.load(x_ptr + r64[:, None] * sxm + cols[None, :], mask=m, other=0.0).to(tl.float32)
                if HAS_RES:
                    r = tl.load(r_ptr + r64[:, None] * srm + cols[None, :], mask=m, other=0.0).to(tl.float32)
                    s = round_to(s + r, s_ty, EMULATE)
                    tl.store(res_ptr + r64[:, None] * sresm + cols[None, :], s.to(s_ty), mask=m)
                ss += tl.sum(s * s, 1)
            rstd = tl.rsqrt(ss / N + eps)
            for c0 in range(0, N, BLOCK_N):
                cols = c0 + cols0
                m_n = cols < N
                m = m_r[:, None] & m_n[None, :]
                s = tl.load(x_ptr + r64[:, None] * sxm + cols[None, :], mask=m, other=0.0).to(tl.float32)
                if HAS_RES:
                    r = tl.load(r_ptr + r64[:, None] * srm + cols[None, :], mask=m, other=0.0).to(tl.float32)
                    s = round_to(s + r, s_ty, EMULATE)
                w1 = 1.0 + tl.load(w_ptr + cols, mask=m_n, other=0.0).to(tl.float32)
                out = (s * rstd[:, None]) * w1[None, :]
                tl.store(out_ptr + r64[:, None] * som + cols[None, :], round_to(out, s_ty, EMULATE).to(s_ty),
                         mask=m)


def _rows(t, N):
    t2 = t.reshape(-1, N)
    return t2.contiguous() if N > 1 and t2.stride(1) != 1 else t2


def add_rms_norm(x, residual, weight, eps=1e-6):
    """See `interns2_fast.ops.add_rms_norm`: x, residual [..., N] (residual may be None), weight [N];
    returns (out, new residual), out contiguous in the promoted dtype of x and residual."""
    N = x.shape[-1]
    s_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = _rows(x, N)
    r2 = None if residual is None else _rows(residual, N)
    w = weight if weight.stride(0) == 1 else weight.contiguous()
    M = x2.shape[0]
    out = torch.empty(M, N, dtype=s_dtype, device=x.device)
    res = None if residual is None else torch.empty(M, N, dtype=s_dtype, device=x.device)
    if M and N:
        BLOCK_N = min(triton.next_power_of_2(N), MAX_BLOCK_N)
        BLOCK_M = max(1, TILE_ELEMENTS // BLOCK_N)
        num_tasks = triton.cdiv(M, BLOCK_M)
        grid = (persistent_grid(x.device, num_tasks, cube=False),)
        with device_guard(x):
            _add_rms_norm_kernel[grid](
                x2, x2 if r2 is None else r2, w, out, out if res is None else res,
                M, N, num_tasks, x2.stride(0), 0 if r2 is None else r2.stride(0), out.stride(0),
                0 if res is None else res.stride(0), float(eps),
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, HAS_RES=r2 is not None, ONE_TILE=N <= BLOCK_N,
                EMULATE=interpreting(),
            )
    return out.view(x.shape), (x if residual is None else res.view(x.shape))


def _config(name, dtype, N, has_res):
    ty = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    BLOCK_N = min(triton.next_power_of_2(N), MAX_BLOCK_N)
    return LoweringConfig(
        f"rms_norm/{name}",
        _add_rms_norm_kernel,
        {"x_ptr": f"*{ty}", "r_ptr": f"*{ty}", "w_ptr": f"*{ty}", "out_ptr": f"*{ty}", "res_ptr": f"*{ty}",
         "M": "i32", "N": "i32", "num_tasks": "i32", "sxm": "i32", "srm": "i32", "som": "i32", "sresm": "i32",
         "eps": "fp32"},
        {"BLOCK_M": max(1, TILE_ELEMENTS // BLOCK_N), "BLOCK_N": BLOCK_N, "HAS_RES": has_res,
         "ONE_TILE": N <= BLOCK_N, "EMULATE": False},
    )


LOWERING_CONFIGS = [
    # Intern-S2 / Qwen3.5-35B-A3B: hidden 2048, bf16; the decoder's add + norm, and the first layer's norm
    _config("add_rms_norm_h2048_bf16", torch.bfloat16, 2048, True),
    _config("rms_norm_h2048_bf16", torch.bfloat16, 2048, False),
    # wider hidden sizes of the family (4096, 5120): the two-pass chunked path
    _config("add_rms_norm_h4096_bf16_chunked", torch.bfloat16, 4096, True),
    # q/k norms of full attention (head_dim 256), rows of 256
    _config("rms_norm_w256_bf16", torch.bfloat16, 256, False),
]
