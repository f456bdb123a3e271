"""Short depthwise causal conv1d (the causal-conv1d package's API), prefill and in-place update.

Each op: its validator (signature, docs, checks), fake kernel, and backends — reference (the
installed transformers fallback), torch (`torch_impl/conv1d.py`), triton (`kernels/conv1d.py`).
"""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import conv1d as torch_conv1d
from . import _empty
from ._registry import OK, define
from ._validate import check_positive_dims, check_same_device, check_tensor

ACTIVATIONS = (None, "silu", "swish")


def _check_activation(op, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def _no_seq_idx_with_states(device, seq_idx, initial_states, **_):
    if seq_idx is not None and initial_states is not None:
        return False, "seq_idx together with initial_states is not implemented"
    return OK


def _no_seq_idx(device, seq_idx, **_):
    return (False, "the transformers fallback takes no seq_idx") if seq_idx is not None else OK


def _triton_width(device, weight, **args):
    from ..kernels.conv1d import MAX_WIDTH

    if weight.shape[1] > MAX_WIDTH:
        return False, f"kernel width W <= {MAX_WIDTH}, got {weight.shape[1]}"
    return _no_seq_idx_with_states(device, **args) if "seq_idx" in args else OK


# --- prefill ----------------------------------------------------------------------------------------

def _fn_fake(x, weight, return_final_states, final_states_out, **_):
    final = None
    if return_final_states and final_states_out is None:
        final = x.new_empty(x.shape[0], x.shape[1], weight.shape[1] - 1)
    return torch.empty_like(x), final


def _fn_strip(args, out):
    """Backends return `out` or `(out, final)`; the op always returns (out, final or None), and a
    final state written into `final_states_out` is the caller's tensor, handed back by `_fn_finish`."""
    if not args["return_final_states"]:
        return out, None
    o, final = out
    return o, (None if args["final_states_out"] is not None else final)


def _fn_finish(args, out):
    o, final = out
    if not args["return_final_states"]:
        return o
    return o, (args["final_states_out"] if args["final_states_out"] is not None else final)


@define("(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, bool return_final_states, "
        "Tensor(a!)? final_states_out, str? activation) -> (Tensor, Tensor?)",
        fake=_fn_fake, strip=_fn_strip, finish=_fn_finish,
        empty=lambda x, weight, initial_states, return_final_states, final_states_out, **_:
        _empty.conv1d_fn(x, weight, initial_states, return_final_states, final_states_out) if x.numel() == 0 else None)
def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """out[b, d, t] = act(bias[d] + sum_w weight[d, w] * x[b, d, t - (W-1) + w]), zeros (or
    `initial_states` [B, D, W-1]) before t = 0. x [B, D, T] with any strides; weight [D, W].
    Returns out [B, D, T] in x's dtype, and with `return_final_states` also the last W-1 inputs
    [B, D, W-1] (written into `final_states_out` when given).

    `seq_idx` [B, T] (int32/int64) packs several sequences per row: a tap never reads across a
    change of seq_idx, and seq_idx < 0 marks padding, whose outputs are zeros (as in the
    causal-conv1d package); the final states then hold the last sequence's inputs (zeros for
    positions of other sequences and for padding). Not together with `initial_states`.
    B, D or T = 0 gives empty results (final states = a copy of `initial_states`, or zeros, when
    T = 0); W = 0 is an error.
    """
    op = "causal_conv1d_fn"
    check_tensor(op, "x", x, ndim=3)
    B, D, _ = x.shape
    check_tensor(op, "weight", weight, ndim=2, shape=(D, None))
    W = weight.shape[1]
    check_positive_dims(op, W=W)
    if bias is not None:
        check_tensor(op, "bias", bias, shape=(D,))
    if initial_states is not None:
        check_tensor(op, "initial_states", initial_states, dtypes=(x.dtype,), shape=(B, D, W - 1))
    if final_states_out is not None:
        check_tensor(op, "final_states_out", final_states_out, dtypes=(x.dtype,), shape=(B, D, W - 1))
    if seq_idx is not None:
        check_tensor(op, "seq_idx", seq_idx, dtypes=(torch.int32, torch.int64), shape=(B, x.shape[2]))
    _check_activation(op, activation)
    check_same_device(op, x=x, weight=weight, bias=bias, initial_states=initial_states, seq_idx=seq_idx,
                      final_states_out=final_states_out)


causal_conv1d_fn.register("reference", supports=_no_seq_idx)(reference.causal_conv1d_fn)
causal_conv1d_fn.register("torch", supports=_no_seq_idx_with_states)(torch_conv1d.causal_conv1d_fn)


@causal_conv1d_fn.register("triton", supports=_triton_width)
def _fn_triton(**kw):
    from ..kernels import conv1d as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.causal_conv1d_fn(**kw)


# --- decode update ----------------------------------------------------------------------------------

@define("(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, str? activation) -> Tensor",
        fake=lambda x, **_: torch.empty_like(x, memory_format=torch.contiguous_format),
        empty=lambda x, **_: _empty.conv1d_update(x) if x.numel() == 0 else None)
def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Decode step: x [B, D, T] (T small), conv_state [B, D, S] with S >= W-1, updated in place to
    hold the last S inputs. Returns out [B, D, T] in x's dtype."""
    op = "causal_conv1d_update"
    check_tensor(op, "x", x, ndim=3)
    B, D, _ = x.shape
    check_tensor(op, "weight", weight, ndim=2, shape=(D, None))
    check_tensor(op, "conv_state", conv_state, ndim=3, shape=(B, D, None))
    check_positive_dims(op, W=weight.shape[1])
    if conv_state.shape[2] < weight.shape[1] - 1:
        raise ValueError(f"{op}: conv_state must keep at least W-1 = {weight.shape[1] - 1} steps, got {conv_state.shape[2]}")
    if bias is not None:
        check_tensor(op, "bias", bias, shape=(D,))
    _check_activation(op, activation)
    check_same_device(op, x=x, conv_state=conv_state, weight=weight, bias=bias)


causal_conv1d_update.register("reference")(reference.causal_conv1d_update)
causal_conv1d_update.register("torch")(torch_conv1d.causal_conv1d_update)


@causal_conv1d_update.register("triton", supports=_triton_width)
def _update_triton(**kw):
    from ..kernels import conv1d as kernel

    return kernel.causal_conv1d_update(**kw)
