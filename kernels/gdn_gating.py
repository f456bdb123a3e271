"""GDN gating in one pass: g = -exp(A_log) * softplus(a + dt_bias) (fp32), beta = sigmoid(b) (b's dtype).

Vector-only kernel on a persistent grid (vector cores). Each task is a [BT, BH] tile of tokens x
value heads of one batch row. With HEAD_MAJOR the tile is stored transposed, giving g and beta
as [B, Hv, T] contiguous (stride 1 along T), the layout the chunked kernels read gates in.
softplus follows torch (threshold 20): x above 20, else log1p(exp(x)), with log1p computed
accurately for tiny exp(x) (so a = -30 gives 9.4e-14, not 0).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from interns2_fast import device as _device

from . import LoweringConfig


@triton.jit
def softplus_fp32(x):
    """torch.nn.functional.softplus (beta 1, threshold 20) in fp32."""
    u = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + u
    # log1p(u): log(w) * u / (w - 1) is exact to a few ulp for all u >= 0; u itself when w rounds to 1.
    lp = tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def gdn_gating_kernel(
    A_log_ptr, a_ptr, dt_bias_ptr, b_ptr, g_ptr, beta_ptr,
    T, H, stride_ab, stride_at, stride_bb, stride_bt,
    num_tasks, num_t_blocks,
    HEAD_MAJOR: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_h = tl.arange(0, BH)
    mask_h = offs_h < H
    neg_A = -tl.exp(tl.load(A_log_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    for task in range(pid, num_tasks, nprog):
        bi = tl.cast(task // num_t_blocks, tl.int64)
        tb = task % num_t_blocks
        offs_t = tb * BT + tl.arange(0, BT)
        mask_t = offs_t < T
        mask = mask_t[:, None] & mask_h[None, :]
        a = tl.load(a_ptr + bi * stride_ab + offs_t[:, None] * stride_at + offs_h[None, :], mask=mask, other=0.0)
        b = tl.load(b_ptr + bi * stride_bb + offs_t[:, None] * stride_bt + offs_h[None, :], mask=mask, other=0.0)
        g = neg_A[None, :] * softplus_fp32(a.to(tl.float32) + dt_bias[None, :])
        beta = tl.sigmoid(b.to(tl.float32))
        if HEAD_MAJOR:
            # Transpose the tile on chip and store it row-contiguous along T (a strided store of the
            # untransposed tile overflows the UB at BT = 64).
            out = bi * H * T + offs_h[:, None] * T + offs_t[None, :]
            mask_o = mask_h[:, None] & mask_t[None, :]
            tl.store(g_ptr + out, tl.trans(g), mask=mask_o)
            tl.store(beta_ptr + out, tl.trans(beta).to(beta_ptr.dtype.element_ty), mask=mask_o)
        else:
            out = bi * T * H + offs_t[:, None] * H + offs_h[None, :]
            tl.store(g_ptr + out, g, mask=mask)
            tl.store(beta_ptr + out, beta.to(beta_ptr.dtype.element_ty), mask=mask)


#: Tokens per tile: a [64, 32] fp32 tile is 8 KB, far inside the UB; fixed so T never recompiles.
BLOCK_T = 64


def gdn_gating(
    A_log: torch.Tensor, a: torch.Tensor, dt_bias: torch.Tensor, b: torch.Tensor, *, head_major: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_log, dt_bias [Hv]; a, b [..., Hv] ([B, T, Hv] when head_major). g fp32, beta in b's dtype."""
    H = a.shape[-1]
    shape = tuple(a.shape)
    if head_major:
        a3, b3 = a, b
    else:  # rows of tokens: decode batches become one tile
        a3, b3 = a.reshape(1, -1, H), b.reshape(1, -1, H)
    if a3.stride(-1) != 1:
        a3 = a3.contiguous()
    if b3.stride(-1) != 1:
        b3 = b3.contiguous()
    B, T = a3.shape[0], a3.shape[1]
    out_shape = (B, H, T) if head_major else shape
    g = torch.empty(out_shape, dtype=torch.float32, device=a.device)
    beta = torch.empty(out_shape, dtype=b.dtype, device=a.device)
    if g.numel() == 0:
        return g, beta
    num_t_blocks = triton.cdiv(T, BLOCK_T)
    num_tasks = B * num_t_blocks
    grid = (_device.persistent_grid(a.device, num_tasks, cube=False),)
    with _device.device_guard(a):
        gdn_gating_kernel[grid](
            A_log.contiguous(), a3, dt_bias.contiguous(), b3, g, beta,
            T, H, a3.stride(0), a3.stride(1), b3.stride(0), b3.stride(1),
            num_tasks, num_t_blocks,
            HEAD_MAJOR=head_major, BT=BLOCK_T, BH=triton.next_power_of_2(H),
        )
    return g, beta


def _config(name, head_major):
    sig = {
        "A_log_ptr": "*bf16", "a_ptr": "*bf16", "dt_bias_ptr": "*bf16", "b_ptr": "*bf16",
        "g_ptr": "*fp32", "beta_ptr": "*bf16",
        "T": "i32", "H": "i32", "stride_ab": "i32", "stride_at": "i32", "stride_bb": "i32", "stride_bt": "i32",
        "num_tasks": "i32", "num_t_blocks": "i32",
    }
    return LoweringConfig(name, gdn_gating_kernel, sig, {"HEAD_MAJOR": head_major, "BT": BLOCK_T, "BH": 32})


#: Intern-S2: 32 value heads, bf16 projections and parameters.
LOWERING_CONFIGS = [
    _config("gdn_gating/Hv32-bf16", False),
    _config("gdn_gating/Hv32-bf16-head_major", True),
]
