"""Gated RMSNorm (`rms_norm_gated`): every backend vs the transformers module
(`Qwen3_5MoeRMSNormGated`, the reference backend) and vs a float64 per-row loop written here that
repeats the transformers roundings; widths 128 (the model), 64 and 100 (not a power of two);
leading shapes, strided inputs, weight dtypes, errors.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), outputs of magnitude ~1-5:

| inputs | vs transformers module      | vs float64 per-row loop |
|--------|-----------------------------|-------------------------|
| fp32   | rms 1e-6, max 1e-5          | rms 1e-6, max 1e-5      |
| bf16   | rms 1e-3, max 1 ulp (exact) | rms 8e-3, max 6.3e-2    |
| fp16   | rms 5e-4, max 4e-3          | rms 1e-3, max 8e-3      |

bf16 vs the module is an exact-rounding check: at most 1 bf16 ulp anywhere and at least 99.9 %
of the elements bit-identical (only the fp32 order of the row sum may differ). The loop rounds the
same way in float64, so vs the loop each of the three roundings contributes up to half an ulp.
Triton runs under TRITON_INTERPRET=1.
"""
import importlib.util

import pytest
import torch

from interns2_fast import ops, reference
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL_REF = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-3, 3.2e-2), torch.float16: (5e-4, 4e-3)}
TOL_LOOP = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (8e-3, 6.3e-2), torch.float16: (1e-3, 8e-3)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]


def assert_close(out, ref, tol, what=""):
    tolerance.assert_close(out, ref, *tol, what)  # (rms ratio, max-abs)

def loop_norm(x, gate, weight, eps):
    """float64, one row at a time, with the module's roundings (normalised value to x.dtype,
    weight product to the promoted dtype)."""
    y_dtype = torch.promote_types(weight.dtype, x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    gates = gate.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape, dtype=torch.float64)
    for i in range(rows.shape[0]):
        r = rows[i].double()
        n = (r / torch.sqrt(r.pow(2).mean() + eps)).to(x.dtype)
        y = (weight.double() * n.double()).to(y_dtype).double()
        g = gates[i].double()
        out[i] = y * g * torch.sigmoid(g)
    return out.reshape(x.shape)


def make(shape, dtype, w_dtype=None):
    x = (torch.randn(shape) * 2).to(dtype)
    gate = (torch.randn(shape) * 2).to(dtype)
    weight = (1 + 0.2 * torch.randn(shape[-1])).to(w_dtype or dtype)
    return x, gate, weight


def bf16_ulp(t):
    return 2.0 ** (torch.floor(torch.log2(t.double().abs().clamp_min(1e-30))) - 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N", [128, 64, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_module_and_loop(backend, dtype, N):
    x, gate, weight = make((3, 7, 4, N), dtype)  # 84 rows in a 4-D layout (B, T, heads, N)
    out = ops.rms_norm_gated(x, gate, weight, 1e-6, backend=backend)
    ref = ops.rms_norm_gated(x, gate, weight, 1e-6, backend="reference")
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, ref, TOL_REF[dtype], "vs module")
    assert_close(out, loop_norm(x, gate, weight, 1e-6), TOL_LOOP[dtype], "vs loop")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bf16_exact_rounding_vs_transformers_module(backend, w_dtype):
    """Many rows of the model's width, against the real module instance (not the stand-in)."""
    mod = reference.fallback_module().Qwen3_5MoeRMSNormGated(128, eps=1e-6)
    x, gate, weight = make((600, 128), torch.bfloat16, w_dtype)
    with torch.no_grad():
        mod.weight.data = weight.clone()
        ref = mod(x, gate)
    out = ops.rms_norm_gated(x, gate, weight, 1e-6, backend=backend)
    assert out.dtype == ref.dtype == torch.bfloat16
    diff = (out.double() - ref.double()).abs()
    assert (diff <= bf16_ulp(ref)).all(), f"max diff {diff.max().item()} exceeds 1 bf16 ulp"
    same = (out == ref).double().mean().item()
    assert same >= 0.999, f"only {same:.4%} bit-identical"


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_eps(backend):
    """x and gate as strided views (gate is a slice of a bigger projection, x transposed)."""
    N = 128
    big = torch.randn(5, 6, 3 * N)
    gate = big[..., N:2 * N]  # row stride 3N
    x = torch.randn(6, 5, N).transpose(0, 1)  # rows not in memory order
    weight = 1 + 0.2 * torch.randn(N)
    for eps in (1e-6, 1e-2):
        out = ops.rms_norm_gated(x, gate, weight, eps, backend=backend)
        ref = ops.rms_norm_gated(x.contiguous(), gate.contiguous(), weight, eps, backend="reference")
        assert_close(out, ref, TOL_REF[torch.float32], f"eps={eps}")
    assert torch.equal(big[..., N:2 * N], gate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_rows_and_fp32_weight_on_half_inputs(backend):
    x, gate, weight = make((9, 1000), torch.float16, torch.float32)
    out = ops.rms_norm_gated(x, gate, weight, 1e-5, backend=backend)
    ref = ops.rms_norm_gated(x, gate, weight, 1e-5, backend="reference")
    assert out.dtype == torch.float16
    assert_close(out, ref, TOL_REF[torch.float16])
    assert_close(out, loop_norm(x, gate, weight, 1e-5), TOL_LOOP[torch.float16])


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_inputs(backend):
    x, gate, weight = make((4, 128), torch.float32)
    with pytest.raises(ValueError, match="rms_norm_gated.*gate"):
        ops.rms_norm_gated(x, gate[:, :64], weight, backend=backend)
    with pytest.raises(ValueError, match="rms_norm_gated.*weight"):
        ops.rms_norm_gated(x, gate, weight[:64], backend=backend)
    with pytest.raises(TypeError, match="rms_norm_gated.*x"):
        ops.rms_norm_gated(x.to(torch.int64), gate, weight, backend=backend)
    with pytest.raises(TypeError, match="rms_norm_gated.*gate"):
        ops.rms_norm_gated(x, gate.double(), weight, backend=backend)


@pytest.mark.skipif(not _HAS_TRITON, reason="triton missing")
def test_triton_rejects_rows_wider_than_1024():
    x, gate, weight = make((2, 1025), torch.float32)
    with pytest.raises(ValueError, match="N <= 1024"):
        ops.rms_norm_gated(x, gate, weight, backend="triton")
