"""Gated DeltaNet ops: chunked prefill, recurrent decode, and the gating arithmetic.

Per value head h with state S in R^{K x V} (fp32):
    S <- exp(g_t) * S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T (scale * q_t)
Value head h reads key head h // (Hv // Hk) (grouped value attention).
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import gdn_gating as _torch_gating
from ..torch_impl import gdn_recurrent as _torch_recurrent
from ._dispatch import register, resolve
from . import _empty
from ._validate import FLOAT_DTYPES, check_cu_seqlens, check_positive_dims, check_same_device, check_tensor


def _check_gdn(op, q, k, v, g, beta, initial_state, cu_seqlens):
    check_tensor(op, "q", q, ndim=4)
    B, T, Hk, K = q.shape
    check_tensor(op, "k", k, ndim=4, dtypes=(q.dtype,), shape=(B, T, Hk, K))
    check_tensor(op, "v", v, ndim=4, dtypes=(q.dtype,), shape=(B, T, None, None))
    Hv, V = v.shape[2], v.shape[3]
    check_positive_dims(op, Hk=Hk, K=K, Hv=Hv, V=V)
    if Hv % Hk != 0:
        raise ValueError(f"{op}: value heads ({Hv}) must be a multiple of key heads ({Hk})")
    check_tensor(op, "g", g, ndim=3, dtypes=FLOAT_DTYPES, shape=(B, T, Hv))
    check_tensor(op, "beta", beta, ndim=3, dtypes=FLOAT_DTYPES, shape=(B, T, Hv))
    N = B
    if cu_seqlens is not None:
        check_tensor(op, "cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int64, torch.int32))
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch size must be 1 (packed sequences), got {B}")
        if cu_seqlens.numel() < 2:
            raise ValueError(f"{op}: cu_seqlens must hold N+1 >= 2 offsets, got {cu_seqlens.numel()}")
        N = cu_seqlens.numel() - 1
        check_cu_seqlens(op, cu_seqlens, T)
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, ndim=4, dtypes=(torch.float32,), shape=(N, Hv, K, V))
    check_same_device(op, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens)


def _check_inplace(op, inplace_final_state, initial_state):
    if inplace_final_state and (initial_state is None or not initial_state.is_contiguous()):
        raise ValueError(f"{op}: inplace_final_state=True needs a contiguous initial_state to update")


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked (prefill) gated delta rule.

    q, k [B,T,Hk,K]; v [B,T,Hv,V]; g (log decay), beta [B,T,Hv]; initial/final state [N,Hv,K,V]
    fp32 (N = B, or the number of sequences in `cu_seqlens`). Returns (o [B,T,Hv,V] in q's
    dtype, final state or None). `scale` defaults to K^-1/2.

    `cu_seqlens` [N+1] (int32/int64, B = 1): offsets starting at 0, non-decreasing, ending at T.
    A CPU tensor is checked here (ValueError); a device tensor is not read back by the op (no sync;
    the chunked backends check the copy they read back to plan chunks), and the kernels clamp every
    offset into [0, T], so a bad device tensor never makes them access memory out of bounds.
    B or T = 0 gives empty results (final state: a copy of initial_state, or zeros); K, V, Hk or
    Hv = 0 is a ValueError.
    """
    op = "chunk_gated_delta_rule"
    _check_gdn(op, q, k, v, g, beta, initial_state, cu_seqlens)
    if q.shape[0] * q.shape[1] == 0:
        return _empty.gdn(q, v, initial_state, cu_seqlens, output_final_state)
    _, impl = resolve(op, backend, q.device)
    return impl(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
    )


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    inplace_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token (decode) gated delta rule; same arguments as `chunk_gated_delta_rule`.

    With `inplace_final_state=True` the `initial_state` tensor is updated in place and returned
    as the final state (it must then be given, contiguous). `cu_seqlens` and empty inputs: as in
    `chunk_gated_delta_rule` (here a device cu_seqlens is never read back: the Triton kernel
    clamps each sequence to [clamp(cu[n], 0, T), clamp(cu[n+1], that, T))).
    """
    op = "fused_recurrent_gated_delta_rule"
    _check_gdn(op, q, k, v, g, beta, initial_state, cu_seqlens)
    _check_inplace(op, inplace_final_state, initial_state)
    if q.shape[0] * q.shape[1] == 0:
        return _empty.gdn(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state)
    _, impl = resolve(op, backend, q.device)
    return impl(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens,
        inplace_final_state=inplace_final_state,
    )


def gdn_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    b: torch.Tensor,
    *,
    head_major: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = -exp(A_log) * softplus(a + dt_bias) in fp32, beta = sigmoid(b) in b's dtype.

    A_log, dt_bias [Hv]; a, b [..., Hv]. Returns g and beta shaped like a and b; with
    `head_major=True` (a, b exactly [B, T, Hv]) they come back as [B, Hv, T] contiguous, stride 1
    along T (the layout the chunked kernels read gates in).
    """
    op = "gdn_gating"
    _check_gating(op, A_log, a, dt_bias, b)
    if head_major and a.dim() != 3:
        raise ValueError(f"{op}: head_major=True needs a and b of shape [B, T, Hv], got {list(a.shape)}")
    if a.numel() == 0:
        return _empty.gating(a, b, head_major)
    _, impl = resolve(op, backend, a.device)
    return impl(A_log, a, dt_bias, b, head_major=head_major)


def _check_gating(op, A_log, a, dt_bias, b):
    # The head count comes from a (the projection output); A_log and dt_bias are each checked
    # against it, so a wrong-length parameter is reported under its own name.
    check_tensor(op, "a", a)
    if a.dim() < 1:
        raise ValueError(f"{op}: a and b must end in the head axis, got a of shape {list(a.shape)}")
    Hv = a.shape[-1]
    check_positive_dims(op, Hv=Hv)
    check_tensor(op, "b", b, shape=tuple(a.shape))
    check_tensor(op, "A_log", A_log, ndim=1, shape=(Hv,))
    check_tensor(op, "dt_bias", dt_bias, ndim=1, shape=(Hv,))
    check_same_device(op, A_log=A_log, a=a, dt_bias=dt_bias, b=b)


def fused_recurrent_gated_delta_rule_with_gating(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    inplace_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`gdn_gating` then `fused_recurrent_gated_delta_rule`, in one call (one kernel on Triton).

    a, b [B,T,Hv] are the raw gate projections; A_log, dt_bias [Hv]. g = -exp(A_log) *
    softplus(a + dt_bias) in fp32 and beta = sigmoid(b) rounded to b's dtype, exactly as the two
    ops in turn; the other arguments and the result are those of fused_recurrent_gated_delta_rule.
    """
    op = "fused_recurrent_gated_delta_rule_with_gating"
    check_tensor(op, "q", q, ndim=4)
    B, T = q.shape[:2]
    check_tensor(op, "v", v, ndim=4)
    check_tensor(op, "a", a, ndim=3, shape=(B, T, v.shape[2]))
    _check_gating(op, A_log, a, dt_bias, b)
    # g / beta stand-ins with the right shapes, for the shared q/k/v/state/device checks
    # (_check_gating has put A_log and dt_bias on a's device).
    _check_gdn(op, q, k, v, a, b, initial_state, cu_seqlens)
    _check_inplace(op, inplace_final_state, initial_state)
    if q.shape[0] * q.shape[1] == 0:
        return _empty.gdn(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state)
    _, impl = resolve(op, backend, q.device)
    return impl(
        q, k, v, a, b, A_log, dt_bias, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        inplace_final_state=inplace_final_state, cu_seqlens=cu_seqlens,
    )


register("chunk_gated_delta_rule", "reference")(reference.chunk_gated_delta_rule)


@register("chunk_gated_delta_rule", "torch")
def _chunk_gated_delta_rule_torch(*args, **kwargs):
    from ..torch_impl import gdn_chunk

    return gdn_chunk.chunk_gated_delta_rule(*args, **kwargs)


@register("chunk_gated_delta_rule", "triton")
def _chunk_gated_delta_rule_triton(*args, **kwargs):
    from ..kernels import gdn_chunk  # lazy: importing interns2_fast never needs Triton

    return gdn_chunk.chunk_gated_delta_rule(*args, **kwargs)


register("fused_recurrent_gated_delta_rule", "reference")(reference.fused_recurrent_gated_delta_rule)


@register("gdn_gating", "reference")
def _gdn_gating_reference(A_log, a, dt_bias, b, *, head_major=False):
    g, beta = reference.gdn_gating(A_log, a, dt_bias, b)
    if head_major:
        g, beta = g.transpose(1, 2).contiguous(), beta.transpose(1, 2).contiguous()
    return g, beta


@register("fused_recurrent_gated_delta_rule_with_gating", "reference")
def _recurrent_with_gating_reference(q, k, v, a, b, A_log, dt_bias, **kw):
    g, beta = reference.gdn_gating(A_log, a, dt_bias, b)
    return reference.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)


# --- recurrent decode and gating: PyTorch and Triton backends -------------------------------------

register("fused_recurrent_gated_delta_rule", "torch")(_torch_recurrent.fused_recurrent_gated_delta_rule)


@register("fused_recurrent_gated_delta_rule", "triton")
def _recurrent_triton(*args, **kw):
    from ..kernels import gdn_recurrent

    return gdn_recurrent.fused_recurrent_gated_delta_rule(*args, **kw)


register("fused_recurrent_gated_delta_rule_with_gating", "torch")(
    _torch_recurrent.fused_recurrent_gated_delta_rule_with_gating
)


@register("fused_recurrent_gated_delta_rule_with_gating", "triton")
def _recurrent_with_gating_triton(*args, **kw):
    from ..kernels import gdn_recurrent

    return gdn_recurrent.fused_recurrent_gated_delta_rule_with_gating(*args, **kw)


register("gdn_gating", "torch")(_torch_gating.gdn_gating)


@register("gdn_gating", "triton")
def _gdn_gating_triton(*args, **kw):
    from ..kernels import gdn_gating as impl

    return impl.gdn_gating(*args, **kw)
