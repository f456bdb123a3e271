"""The torch paths of the norms and the gating: how many ATen compute ops one call dispatches, and that
they still equal the reference (the installed transformers modules) bit for bit.

On an NPU every ATen op is a launch, so these paths are written to dispatch few ops while keeping the
reference roundings (casts folded into `out=` writes, -exp(A_log) and (1 + w) kept per parameter).
Counted with a TorchDispatchMode around the torch_impl functions (the public ops are custom ops: one
dispatch each from outside): views and bare allocations (no device work) are not counted.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from interns2_fast import ops
from interns2_fast.torch_impl import gdn_gating as t_gating
from interns2_fast.torch_impl import norm_gated as t_norm_gated
from interns2_fast.torch_impl import rms_norm as t_rms_norm

NO_WORK = {"empty", "empty_like", "empty_strided", "view", "_unsafe_view", "as_strided", "expand", "unsqueeze",
           "squeeze", "slice", "select", "t", "transpose", "permute", "alias", "detach",
           "promote_types"}  # promote_types: a host-side dtype query


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_WORK:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _count(fn, *args):
    with torch.no_grad(), _Count() as c:
        out = fn(*args)
    return out, c.ops


@pytest.mark.parametrize("dtype, most", [(torch.bfloat16, 8), (torch.float32, 7)])
def test_add_rms_norm_torch_path(dtype, most):
    x = torch.randn(2, 3, 2048, dtype=dtype)
    r, w = torch.randn_like(x), torch.randn(2048, dtype=dtype) * 0.1
    ops.add_rms_norm(x, r, w, 1e-6, backend="torch")  # (1 + w) is formed once per weight
    (out, res), counted = _count(t_rms_norm.add_rms_norm, x, r, w, 1e-6)
    assert len(counted) <= most, counted
    want, want_res = ops.add_rms_norm(x, r, w, 1e-6, backend="reference")
    assert torch.equal(out, want) and torch.equal(res, want_res) and out.dtype == dtype


@pytest.mark.parametrize("dtype, most", [(torch.bfloat16, 10), (torch.float32, 8)])
def test_rms_norm_gated_torch_path(dtype, most):
    x = torch.randn(32, 128, dtype=dtype)
    g, w = torch.randn_like(x), torch.randn(128, dtype=dtype)
    out, counted = _count(t_norm_gated.rms_norm_gated, x, g, w, 1e-6)
    assert len(counted) <= most, counted
    assert torch.equal(out, ops.rms_norm_gated(x, g, w, 1e-6, backend="reference")) and out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gdn_gating_torch_path_keeps_neg_exp_a_log(dtype):
    A_log, dt_bias = torch.randn(32), torch.randn(32, dtype=dtype)
    a, b = torch.randn(1, 1, 32, dtype=dtype), torch.randn(1, 1, 32, dtype=dtype)
    ops.gdn_gating(A_log, a, dt_bias, b, backend="torch")
    (g, beta), counted = _count(t_gating.gdn_gating, A_log, a, dt_bias, b)
    assert "exp" not in counted and "neg" not in counted, counted  # -exp(A_log) is kept, not recomputed
    want = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    assert torch.equal(g, want[0]) and torch.equal(beta, want[1])
    with torch.no_grad():
        A_log.add_(0.5)  # an in-place change of the parameter is seen
    want = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    assert torch.equal(ops.gdn_gating(A_log, a, dt_bias, b, backend="torch")[0], want[0])
