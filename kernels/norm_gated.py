"""Gated RMSNorm (norm before gate) over rows of width N <= 1024, with the transformers rounding:

    n   = (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(x.dtype)      # fp32 statistics
    y   = weight * n                                                 # in promote(weight, x) dtype
    out = (y_fp32 * silu(gate_fp32)).to(x.dtype)

One kernel, `_rms_norm_gated_kernel`: vector-only, persistent grid of vector-core size, one task
per BLOCK_M rows (a [BLOCK_M, BLOCK_N] tile, BLOCK_N = next power of two >= N, masked). x and
gate are read with their own row strides (the last axis must be stride 1; the launcher makes a
contiguous copy otherwise).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast.device import device_guard, interpreting, persistent_grid

from . import LoweringConfig
from .rounding import round_to

MAX_WIDTH = 1024
#: elements per tile (rows x padded width): 16 rows of 128 in the model
TILE_ELEMENTS = 2048


@triton.jit
def _rms_norm_gated_kernel(
    x_ptr, g_ptr, w_ptr, out_ptr,
    M, N, num_tasks, sxm, sgm, som, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_Y: tl.constexpr, EMULATE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    x_ty = x_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    m_n = cols < N
    w = tl.load(w_ptr + cols, mask=m_n, other=0.0).to(tl.float32)
    for task in range(pid, num_tasks, nprog):
        rows = task * BLOCK_M + tl.arange(0, BLOCK_M)
        r64 = tl.cast(rows, tl.int64)
        m = (rows < M)[:, None] & m_n[None, :]
        x = tl.load(x_ptr + r64[:, None] * sxm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + r64[:, None] * sgm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, 1) / N + eps)
        n = round_to(x * rstd[:, None], x_ty, EMULATE)
        y = w[None, :] * n  # exact in fp32 for bf16/fp16 operands
        if ROUND_Y:  # weight and x share a 16-bit dtype: transformers rounds the product to it
            y = round_to(y, x_ty, EMULATE)
        out = y * (g / (1.0 + tl.exp(-g)))
        tl.store(out_ptr + r64[:, None] * som + cols[None, :], round_to(out, x_ty, EMULATE).to(x_ty), mask=m)


def rms_norm_gated(x, gate, weight, eps=1e-6):
    """See `interns2_fast.ops.rms_norm_gated`: x, gate [..., N], weight [N]; out like x (contiguous)."""
    N = x.shape[-1]
    if N > MAX_WIDTH:
        raise ValueError(f"rms_norm_gated[triton]: row width N <= {MAX_WIDTH} supported, got {N}")
    x2 = x.reshape(-1, N)
    g2 = gate.reshape(-1, N)
    if N > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    if N > 1 and g2.stride(1) != 1:
        g2 = g2.contiguous()
    w = weight if weight.stride(0) == 1 else weight.contiguous()
    M = x2.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.view(x.shape)
    y_dtype = torch.promote_types(weight.dtype, x.dtype)
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = max(1, TILE_ELEMENTS // BLOCK_N)
    num_tasks = triton.cdiv(M, BLOCK_M)
    grid = (persistent_grid(x.device, num_tasks, cube=False),)
    with device_guard(x):
        _rms_norm_gated_kernel[grid](
            x2, g2, w, out, M, N, num_tasks, x2.stride(0), g2.stride(0), out.stride(0), float(eps),
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, ROUND_Y=y_dtype != torch.float32, EMULATE=interpreting(),
        )
    return out.view(x.shape)


LOWERING_CONFIGS = [
    # Intern-S2: 32 value heads of 128 per token, B*T*32 rows (M is a runtime argument), bf16.
    LoweringConfig(
        "norm_gated/rms_norm_gated_w128_bf16",
        _rms_norm_gated_kernel,
        {"x_ptr": "*bf16", "g_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "N": "i32",
         "num_tasks": "i32", "sxm": "i32", "sgm": "i32", "som": "i32", "eps": "fp32"},
        {"BLOCK_M": TILE_ELEMENTS // 128, "BLOCK_N": 128, "ROUND_Y": True, "EMULATE": False},
    ),
]
