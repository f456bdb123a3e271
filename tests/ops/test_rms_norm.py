"""Residual add + RMSNorm with (1 + w) scaling (`add_rms_norm`): every backend vs the
transformers module (`Qwen3_5MoeRMSNorm` after the decoder layer's `residual + h`, the reference
backend) and vs a float64 per-row loop written here; widths 2048 (the model), 256 (q/k norm
rows), 100 (not a power of two) and 4100 (wider than one Triton tile: the chunked path, with a
masked tail); residual given or None; leading shapes, strided inputs, errors.

Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref|), outputs of magnitude ~1-5:

| inputs | vs transformers module      | vs float64 per-row loop |
|--------|-----------------------------|-------------------------|
| fp32   | rms 1e-6, max 1e-5          | rms 1e-6, max 1e-5      |
| bf16   | rms 1e-3, max 1 ulp (exact) | rms 5e-3, max 6.3e-2    |
| fp16   | rms 5e-4, max 4e-3          | rms 1e-3, max 8e-3      |

The new residual is compared bit-exactly with `residual + x`. bf16 vs the real module instance is
an exact-rounding check: at most 1 bf16 ulp anywhere and at least 99.9 % of the elements
bit-identical (only the fp32 order of the row sum may differ). Triton runs under TRITON_INTERPRET=1.
"""
import importlib.util

import pytest
import torch

from interns2_fast import ops, reference
import tolerance  # noqa: E402  (tests/tolerance.py)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL_REF = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-3, 3.2e-2), torch.float16: (5e-4, 4e-3)}
TOL_LOOP = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (5e-3, 6.3e-2), torch.float16: (1e-3, 8e-3)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not _HAS_TRITON, reason="triton missing"))]


def assert_close(out, ref, tol, what=""):
    tolerance.assert_close(out, ref, *tol, what)  # (rms ratio, max-abs)


def loop_norm(x, residual, weight, eps):
    """float64, one row at a time: the add rounded to the tensors' dtype, then the (1 + w) norm
    rounded once at the end."""
    dtype = x.dtype
    rows = x.reshape(-1, x.shape[-1])
    res = None if residual is None else residual.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape, dtype=torch.float64)
    for i in range(rows.shape[0]):
        s = rows[i].double() if res is None else (res[i].double() + rows[i].double()).to(dtype).double()
        n = s / torch.sqrt(s.pow(2).mean() + eps) * (1.0 + weight.double())
        out[i] = n.to(dtype).double()
    return out.reshape(x.shape)


def make(shape, dtype, w_dtype=None):
    x = (torch.randn(shape) * 2).to(dtype)
    residual = (torch.randn(shape) * 3).to(dtype)
    weight = (0.2 * torch.randn(shape[-1])).to(w_dtype or dtype)  # (1 + w) form: weights near 0
    return x, residual, weight


def bf16_ulp(t):
    return 2.0 ** (torch.floor(torch.log2(t.double().abs().clamp_min(1e-30))) - 7)


@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "no-residual"])
@pytest.mark.parametrize("shape", [(1, 1, 2048), (2, 3, 100), (5, 37)])
def test_torch_path_fp32_is_bit_identical_to_the_module(shape, with_residual):
    """fp32 runs as one torch.rms_norm with (1 + w) as its weight: the module's arithmetic exactly."""
    x, residual, weight = make(shape, torch.float32)
    residual = residual if with_residual else None
    out, _ = ops.add_rms_norm(x, residual, weight, 1e-6, backend="torch")
    ref, _ = ops.add_rms_norm(x, residual, weight, 1e-6, backend="reference")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "no-residual"])
@pytest.mark.parametrize("N", [2048, 256, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_module_and_loop(backend, dtype, N, with_residual):
    x, residual, weight = make((2, 3, N), dtype)  # [B, T, hidden]
    residual = residual if with_residual else None
    out, new_res = ops.add_rms_norm(x, residual, weight, 1e-6, backend=backend)
    ref, ref_res = ops.add_rms_norm(x, residual, weight, 1e-6, backend="reference")
    assert out.dtype == dtype and out.shape == x.shape and new_res.shape == x.shape
    assert torch.equal(new_res, ref_res), "new residual is not bit-identical to residual + x"
    if residual is None:
        assert new_res is x
    assert_close(out, ref, TOL_REF[dtype], "vs module")
    assert_close(out, loop_norm(x, residual, weight, 1e-6), TOL_LOOP[dtype], "vs loop")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wide_rows_chunked_with_tail(backend, dtype):
    """4100 columns: two full 2048-column chunks and a 4-column masked tail on the Triton path."""
    x, residual, weight = make((3, 4100), dtype)
    out, new_res = ops.add_rms_norm(x, residual, weight, 1e-5, backend=backend)
    ref, ref_res = ops.add_rms_norm(x, residual, weight, 1e-5, backend="reference")
    assert torch.equal(new_res, ref_res)
    assert_close(out, ref, TOL_REF[dtype], "vs module")
    assert_close(out, loop_norm(x, residual, weight, 1e-5), TOL_LOOP[dtype], "vs loop")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bf16_exact_rounding_vs_transformers_module(backend, w_dtype):
    """Many rows of the model's width, against a real module instance and the real add."""
    N = 2048
    mod = reference.fallback_module().Qwen3_5MoeRMSNorm(N, eps=1e-6)
    x, residual, weight = make((40, N), torch.bfloat16, w_dtype)
    with torch.no_grad():
        mod.weight.data = weight.clone()
        want_res = residual + x
        ref = mod(want_res)
    out, new_res = ops.add_rms_norm(x, residual, weight, 1e-6, backend=backend)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(new_res, want_res)
    diff = (out.double() - ref.double()).abs()
    assert (diff <= bf16_ulp(ref)).all(), f"max diff {diff.max().item()} exceeds 1 bf16 ulp"
    same = (out == ref).double().mean().item()
    assert same >= 0.999, f"only {same:.4%} bit-identical"


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_eps(backend):
    """x a slice of a bigger tensor (row stride 3N), residual transposed (rows out of memory order)."""
    N = 256
    big = torch.randn(5, 6, 3 * N)
    x = big[..., N:2 * N]
    residual = torch.randn(6, 5, N).transpose(0, 1)
    weight = 0.2 * torch.randn(N)
    for eps in (1e-6, 1e-2):
        out, new_res = ops.add_rms_norm(x, residual, weight, eps, backend=backend)
        ref, ref_res = ops.add_rms_norm(x.contiguous(), residual.contiguous(), weight, eps, backend="reference")
        assert torch.equal(new_res, ref_res)
        assert_close(out, ref, TOL_REF[torch.float32], f"eps={eps}")
    assert torch.equal(big[..., N:2 * N], x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified_and_zero_rows(backend):
    x, residual, weight = make((4, 256), torch.bfloat16)
    x0, r0, w0 = x.clone(), residual.clone(), weight.clone()
    ops.add_rms_norm(x, residual, weight, backend=backend)
    assert torch.equal(x, x0) and torch.equal(residual, r0) and torch.equal(weight, w0)
    out, res = ops.add_rms_norm(x[:0], residual[:0], weight, backend=backend)
    assert out.shape == (0, 256) and res.shape == (0, 256)


def test_reference_is_the_decoder_add_and_module():
    """The reference backend equals the installed decoder's arithmetic on a real module instance."""
    mod = reference.fallback_module().Qwen3_5MoeRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        mod.weight.normal_(0, 0.3)
    x, residual = torch.randn(3, 64), torch.randn(3, 64)
    out, res = ops.add_rms_norm(x, residual, mod.weight, 1e-6, backend="reference")
    assert torch.equal(res, residual + x)
    assert torch.equal(out, mod(residual + x))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_bad_inputs(backend):
    x, residual, weight = make((4, 128), torch.float32)
    with pytest.raises(ValueError, match="add_rms_norm.*residual"):
        ops.add_rms_norm(x, residual[:, :64], weight, backend=backend)
    with pytest.raises(ValueError, match="add_rms_norm.*weight"):
        ops.add_rms_norm(x, residual, weight[:64], backend=backend)
    with pytest.raises(TypeError, match="add_rms_norm.*x"):
        ops.add_rms_norm(x.to(torch.int64), residual, weight, backend=backend)
    with pytest.raises(TypeError, match="add_rms_norm.*residual"):
        ops.add_rms_norm(x, residual.double(), weight, backend=backend)
    with pytest.raises(ValueError, match="add_rms_norm.*eps"):
        ops.add_rms_norm(x, residual, weight, -1.0, backend=backend)


def test_torch_path_follows_weight_updates():
    """The torch path keeps (1 + w) per weight tensor: an in-place weight change must be seen."""
    x, residual, weight = make((2, 64), torch.float32)
    first, _ = ops.add_rms_norm(x, residual, weight, backend="torch")
    with torch.no_grad():
        weight.mul_(-3.0).add_(0.5)
    second, _ = ops.add_rms_norm(x, residual, weight, backend="torch")
    ref, _ = ops.add_rms_norm(x, residual, weight, backend="reference")
    assert not torch.allclose(first, second)
    assert_close(second, ref, TOL_REF[torch.float32])
    other = weight.clone()  # a new tensor with the same values: same result
    assert_close(ops.add_rms_norm(x, residual, other, backend="torch")[0], ref, TOL_REF[torch.float32])


def test_torch_path_follows_a_replaced_weight_storage():
    """`param.data = ...` (as module conversions do) keeps the object and its version counter: the kept
    (1 + w) must still be recomputed."""
    x, residual, _ = make((2, 64), torch.float32)
    weight = torch.nn.Parameter(torch.zeros(64))
    with torch.no_grad():
        ops.add_rms_norm(x, residual, weight, backend="torch")
        weight.data = torch.full((64,), 0.5)
        got, _ = ops.add_rms_norm(x, residual, weight, backend="torch")
        ref, _ = ops.add_rms_norm(x, residual, weight, backend="reference")
    assert torch.equal(got, ref)
