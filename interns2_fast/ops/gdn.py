"""Gated DeltaNet ops: chunked prefill, recurrent decode, and the gating arithmetic.

Per value head h with state S in R^{K x V} (fp32):
    S <- exp(g_t) * S;   S <- S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T (scale * q_t)
Value head h reads key head h // (Hv // Hk) (grouped value attention).

Each op: its validator (signature, docs, checks), fake kernel, and backends — reference (the
installed transformers fallback), torch (`torch_impl/`), triton (`kernels/`) — with the capability
predicate of each backend that has limits.
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import gdn_chunk as _torch_chunk
from ..torch_impl import gdn_gating as _torch_gating
from ..torch_impl import gdn_recurrent as _torch_recurrent
from . import _empty
from ._registry import OK, define
from ._validate import FLOAT_DTYPES, check_cu_seqlens, check_positive_dims, check_same_device, check_tensor

_GDN_ARGS = ("Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, float? scale, Tensor? initial_state, "
             "bool output_final_state, bool use_qk_l2norm_in_kernel, Tensor? cu_seqlens")


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


def _gdn_fake(q, v, initial_state, cu_seqlens, output_final_state, inplace=False):
    B, T, _, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = q.new_empty(B, T, Hv, V)
    final = None if (inplace or not output_final_state) else q.new_empty(N, Hv, K, V, dtype=torch.float32)
    return o, final


def _triton_head_dims(device, q, v, **_):
    from ..kernels.gdn_chunk import MAX_HEAD_DIM

    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        return False, f"head dims up to {MAX_HEAD_DIM} (UB tile budget), got K={K}, V={V}"
    return OK


def _gdn_empty(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state=False, **_):
    if q.shape[0] * q.shape[1]:
        return None
    return _empty.gdn(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state)


# --- chunked prefill --------------------------------------------------------------------------------

@define(f"({_GDN_ARGS}) -> (Tensor, Tensor?)",
        fake=lambda q, v, initial_state, cu_seqlens, output_final_state, **_:
        _gdn_fake(q, v, initial_state, cu_seqlens, output_final_state), empty=_gdn_empty,
        reads_values=("cu_seqlens",))
def chunk_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None):
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
    _check_gdn("chunk_gated_delta_rule", q, k, v, g, beta, initial_state, cu_seqlens)


chunk_gated_delta_rule.register("reference")(reference.chunk_gated_delta_rule)
chunk_gated_delta_rule.register("torch")(_torch_chunk.chunk_gated_delta_rule)


@chunk_gated_delta_rule.register("triton", supports=_triton_head_dims)
def _chunk_triton(**kw):
    from ..kernels import gdn_chunk  # lazy: importing interns2_fast never needs Triton

    return gdn_chunk.chunk_gated_delta_rule(**kw)


# --- recurrent decode -------------------------------------------------------------------------------

def _drop_inplace_state(args, out):
    """An in-place final state is the caller's `initial_state`: not returned through the custom op."""
    o, s = out
    return (o, None) if (args["inplace_final_state"] and s is args["initial_state"]) else (o, s)


def _return_inplace_state(args, out):
    o, s = out
    if args["inplace_final_state"]:
        return o, args["initial_state"]
    return o, s


def _grad_without_inplace(reference_impl, args):
    """With grad: the reference computes the final state out of place (autograd forbids updating a
    tensor it saved), then the caller's state gets its value; the returned state is the
    differentiable one."""
    if not args["inplace_final_state"]:
        return reference_impl(**args)
    o, s = reference_impl(**{**args, "initial_state": args["initial_state"].clone(), "inplace_final_state": False,
                             "output_final_state": True})
    with torch.no_grad():
        args["initial_state"].copy_(s)
    return o, s


def _recurrent_fake(q, v, initial_state, cu_seqlens, output_final_state, inplace_final_state, **_):
    return _gdn_fake(q, v, initial_state, cu_seqlens, output_final_state or inplace_final_state,
                     inplace=inplace_final_state)


@define(f"({_GDN_ARGS.replace('Tensor? initial_state', 'Tensor(a!)? initial_state')}, "
        "bool inplace_final_state) -> (Tensor, Tensor?)",
        fake=_recurrent_fake, strip=_drop_inplace_state, finish=_return_inplace_state,
        grad_path=_grad_without_inplace, empty=_gdn_empty, reads_values=("cu_seqlens",))
def fused_recurrent_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, inplace_final_state=False):
    """Token-by-token (decode) gated delta rule; same arguments as `chunk_gated_delta_rule`.

    With `inplace_final_state=True` the `initial_state` tensor is updated in place and returned
    as the final state (it must then be given, contiguous). `cu_seqlens` and empty inputs: as in
    `chunk_gated_delta_rule` (here a device cu_seqlens is never read back: the Triton kernel
    clamps each sequence to [clamp(cu[n], 0, T), clamp(cu[n+1], that, T))).
    """
    op = "fused_recurrent_gated_delta_rule"
    _check_gdn(op, q, k, v, g, beta, initial_state, cu_seqlens)
    _check_inplace(op, inplace_final_state, initial_state)


fused_recurrent_gated_delta_rule.register("reference")(reference.fused_recurrent_gated_delta_rule)
fused_recurrent_gated_delta_rule.register("torch")(_torch_recurrent.fused_recurrent_gated_delta_rule)


@fused_recurrent_gated_delta_rule.register("triton", supports=_triton_head_dims)
def _recurrent_triton(**kw):
    from ..kernels import gdn_recurrent

    return gdn_recurrent.fused_recurrent_gated_delta_rule(**kw)


# --- gating -----------------------------------------------------------------------------------------

def _gating_fake(A_log, a, dt_bias, b, head_major):
    shape = (a.shape[0], a.shape[2], a.shape[1]) if head_major else tuple(a.shape)
    return a.new_empty(shape, dtype=torch.float32), b.new_empty(shape)


@define("(Tensor A_log, Tensor a, Tensor dt_bias, Tensor b, bool head_major) -> (Tensor, Tensor)", fake=_gating_fake,
        empty=lambda a, b, head_major, **_: _empty.gating(a, b, head_major) if a.numel() == 0 else None)
def gdn_gating(A_log, a, dt_bias, b, *, head_major=False):
    """g = -exp(A_log) * softplus(a + dt_bias) in fp32, beta = sigmoid(b) in b's dtype.

    A_log, dt_bias [Hv]; a, b [..., Hv]. Returns g and beta shaped like a and b; with
    `head_major=True` (a, b exactly [B, T, Hv]) they come back as [B, Hv, T] contiguous, stride 1
    along T (the layout the chunked kernels read gates in).
    """
    op = "gdn_gating"
    _check_gating(op, A_log, a, dt_bias, b)
    if head_major and a.dim() != 3:
        raise ValueError(f"{op}: head_major=True needs a and b of shape [B, T, Hv], got {list(a.shape)}")


@gdn_gating.register("reference")
def _gating_reference(A_log, a, dt_bias, b, head_major):
    g, beta = reference.gdn_gating(A_log, a, dt_bias, b)
    if head_major:
        g, beta = g.transpose(1, 2).contiguous(), beta.transpose(1, 2).contiguous()
    return g, beta


gdn_gating.register("torch")(_torch_gating.gdn_gating)


@gdn_gating.register("triton")
def _gating_triton(**kw):
    from ..kernels import gdn_gating as kernel

    return kernel.gdn_gating(**kw)


# --- gating + recurrent step in one op (one Triton launch) -----------------------------------------

@define("(Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor A_log, Tensor dt_bias, float? scale, "
        "Tensor(a!)? initial_state, bool output_final_state, bool use_qk_l2norm_in_kernel, "
        "bool inplace_final_state, Tensor? cu_seqlens) -> (Tensor, Tensor?)",
        fake=_recurrent_fake, strip=_drop_inplace_state, finish=_return_inplace_state,
        grad_path=_grad_without_inplace, empty=_gdn_empty, reads_values=("cu_seqlens",))
def fused_recurrent_gated_delta_rule_with_gating(q, k, v, a, b, A_log, dt_bias, *, scale=None, initial_state=None,
                                                 output_final_state=False, use_qk_l2norm_in_kernel=False,
                                                 inplace_final_state=False, cu_seqlens=None):
    """`gdn_gating` then `fused_recurrent_gated_delta_rule`, in one call (one kernel on Triton).

    a, b [B,T,Hv] are the raw gate projections; A_log, dt_bias [Hv]. g = -exp(A_log) *
    softplus(a + dt_bias) in fp32 and beta = sigmoid(b) rounded to b's dtype, exactly as the two
    ops in turn; the other arguments and the result are those of fused_recurrent_gated_delta_rule.
    """
    op = "fused_recurrent_gated_delta_rule_with_gating"
    check_tensor(op, "q", q, ndim=4)
    check_tensor(op, "v", v, ndim=4)
    check_tensor(op, "a", a, ndim=3, shape=(q.shape[0], q.shape[1], v.shape[2]))
    _check_gating(op, A_log, a, dt_bias, b)
    # a / b stand in for g / beta (same shapes) in the shared q/k/v/state/device checks
    _check_gdn(op, q, k, v, a, b, initial_state, cu_seqlens)
    _check_inplace(op, inplace_final_state, initial_state)


@fused_recurrent_gated_delta_rule_with_gating.register("reference")
def _with_gating_reference(q, k, v, a, b, A_log, dt_bias, **kw):
    g, beta = reference.gdn_gating(A_log, a, dt_bias, b)
    return reference.fused_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)


fused_recurrent_gated_delta_rule_with_gating.register("torch")(
    _torch_recurrent.fused_recurrent_gated_delta_rule_with_gating)


@fused_recurrent_gated_delta_rule_with_gating.register("triton", supports=_triton_head_dims)
def _with_gating_triton(**kw):
    from ..kernels import gdn_recurrent

    return gdn_recurrent.fused_recurrent_gated_delta_rule_with_gating(**kw)


# --- PTO (csrc/, CPU simulator; NPU build unverified; never chosen by auto) -------------------------

def _pto_decode(device, q, k, v, a, b, A_log, dt_bias, cu_seqlens, **_):
    from .. import pto

    why = pto.decode_problem(q, v, cu_seqlens, k=k, a=a, b=b, A_log=A_log, dt_bias=dt_bias)
    return OK if why is None else (False, why)


@fused_recurrent_gated_delta_rule_with_gating.register("pto", supports=_pto_decode)
def _with_gating_pto(**kw):
    from .. import pto  # lazy: the csrc/ extension is optional

    return pto.fused_recurrent_gated_delta_rule_with_gating(**kw)
