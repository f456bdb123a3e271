"""Short depthwise causal conv1d (the causal-conv1d package's API), prefill and in-place update."""
from __future__ import annotations

import torch

from .. import reference
from ..torch_impl import conv1d as torch_conv1d
from ._dispatch import register, resolve
from . import _empty
from ._validate import check_positive_dims, check_same_device, check_tensor

ACTIVATIONS = (None, "silu", "swish")


def _check_activation(op, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    backend: str = "auto",
):
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
    check_same_device(op, x=x, weight=weight, bias=bias, initial_states=initial_states, seq_idx=seq_idx)
    if seq_idx is not None and initial_states is not None:
        raise NotImplementedError(f"{op}: seq_idx together with initial_states is not supported "
                                  "(as in the causal-conv1d package)")
    if x.numel() == 0:
        return _empty.conv1d_fn(x, weight, initial_states, return_final_states, final_states_out)
    _, impl = resolve(op, backend, x.device)
    return impl(
        x, weight, bias, seq_idx=seq_idx, initial_states=initial_states, return_final_states=return_final_states,
        final_states_out=final_states_out, activation=activation,
    )


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
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
    if x.numel() == 0:
        return _empty.conv1d_update(x)
    _, impl = resolve(op, backend, x.device)
    return impl(x, conv_state, weight, bias, activation)


register("causal_conv1d_fn", "reference")(reference.causal_conv1d_fn)
register("causal_conv1d_update", "reference")(reference.causal_conv1d_update)
register("causal_conv1d_fn", "torch")(torch_conv1d.causal_conv1d_fn)
register("causal_conv1d_update", "torch")(torch_conv1d.causal_conv1d_update)


@register("causal_conv1d_fn", "triton")
def _causal_conv1d_fn_triton(x, weight, bias=None, **kw):
    from ..kernels import conv1d as kernel  # lazily: importing interns2_fast never needs Triton

    return kernel.causal_conv1d_fn(x, weight, bias, **kw)


@register("causal_conv1d_update", "triton")
def _causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation=None):
    from ..kernels import conv1d as kernel

    return kernel.causal_conv1d_update(x, conv_state, weight, bias, activation)
