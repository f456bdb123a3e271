"""GDN gating: g = -exp(A_log) * softplus(a + dt_bias) (fp32), beta = sigmoid(b) (b's dtype).

Every backend vs the reference backend (the transformers inline arithmetic) and vs a float64
formula. Tolerances (rms = rms(out - ref) / rms(ref); max = max |out - ref| relative to max |ref|):

| output         | vs reference             | vs float64 formula       |
|----------------|--------------------------|--------------------------|
| g (fp32)       | rms 1e-6, max 1e-6       | rms 1e-6, max 1e-6       |
| beta fp32      | rms 1e-6, max 1e-6       | rms 1e-6, max 1e-6       |
| beta bf16      | rms 4e-3, max 8e-3       | rms 4e-3, max 8e-3       |
| beta fp16      | rms 5e-4, max 1e-3       | rms 5e-4, max 1e-3       |

(a bf16/fp16 beta may differ from the reference by one rounding step where the fp32 sigmoid falls
next to a rounding boundary.) Triton runs under TRITON_INTERPRET=1.
"""
import pytest
import torch

from interns2_fast import ops
import tolerance  # noqa: E402  (tests/tolerance.py)

# triton-ascend's interpreter converts 1-element arrays to scalars the way numpy 1.25+ deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TOL = {
    torch.float32: (1e-6, 1e-6),
    torch.bfloat16: (4e-3, 8e-3),
    torch.float16: (5e-4, 1e-3),
}
BACKENDS = ["torch", "triton"]


def assert_close(out, ref, dtype, what):
    tolerance.assert_close(out, ref, *TOL[dtype], what, max_scale="ref")  # max error relative to max |ref|

def need(backend):
    if backend == "triton":
        pytest.importorskip("triton")


def formula64(A_log, a, dt_bias, b):
    x = a.double() + dt_bias.double()
    softplus = torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))
    return -A_log.double().exp() * softplus, torch.sigmoid(b.double())


def inputs(shape, dtype, param_dtype=torch.float32, extreme=True):
    Hv = shape[-1]
    a = torch.randn(shape) * 4
    if extreme:
        flat = a.view(-1)
        flat[: min(8, flat.numel())] = torch.tensor([30.0, -30.0, 20.5, 19.5, -20.0, 0.0, 1e-3, -8.0])[: min(8, flat.numel())]
    b = torch.randn(shape) * 4
    A_log = (torch.rand(Hv) * 4 - 2).to(param_dtype)
    dt_bias = torch.randn(Hv).to(param_dtype)
    return A_log, a.to(dtype), dt_bias, b.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 32), (3, 5, 4), (2, 7, 6), (9, 4), (2, 3, 2, 8)], ids=str)
def test_matches_reference_and_float64(backend, dtype, shape):
    need(backend)
    A_log, a, dt_bias, b = inputs(shape, dtype, param_dtype=dtype if len(shape) == 2 else torch.float32)
    g, beta = ops.gdn_gating(A_log, a, dt_bias, b, backend=backend)
    g_ref, beta_ref = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    g64, beta64 = formula64(A_log, a, dt_bias, b)
    assert g.dtype == torch.float32 and beta.dtype == dtype
    assert g.shape == a.shape and beta.shape == b.shape
    assert_close(g, g_ref, torch.float32, "g vs reference")
    assert_close(g, g64, torch.float32, "g vs float64")
    assert_close(beta, beta_ref, dtype, "beta vs reference")
    assert_close(beta, beta64, dtype, "beta vs float64")
    assert torch.isfinite(g).all() and (g <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_softplus_tails_elementwise(backend):
    """softplus(x) = x above 20 and log1p(exp(x)) below, to fp32 relative precision at both ends."""
    need(backend)
    x = torch.tensor([-30.0, -25.0, -20.0, -10.0, -1e-3, 0.0, 5.0, 19.9, 20.0, 20.1, 30.0, 80.0])
    a = x.view(1, 1, -1)
    Hv = x.numel()
    A_log, dt_bias = torch.zeros(Hv), torch.zeros(Hv)
    g, _ = ops.gdn_gating(A_log, a, dt_bias, torch.zeros_like(a), backend=backend)
    g64, _ = formula64(A_log, a, dt_bias, a)
    rel = ((g.double() - g64).abs() / g64.abs()).max().item()
    assert rel < 1e-6, rel


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("shape", [(1, 1, 32), (2, 37, 4)], ids=str)
def test_head_major_layout(backend, shape):
    need(backend)
    A_log, a, dt_bias, b = inputs(shape, torch.bfloat16)
    g, beta = ops.gdn_gating(A_log, a, dt_bias, b, head_major=True, backend=backend)
    g_ref, beta_ref = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    B, T, Hv = shape
    assert g.shape == (B, Hv, T) and beta.shape == (B, Hv, T)
    assert g.is_contiguous() and beta.is_contiguous()
    assert_close(g, g_ref.transpose(1, 2), torch.float32, "g")
    assert_close(beta, beta_ref.transpose(1, 2), torch.bfloat16, "beta")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    need(backend)
    proj = torch.randn(2, 5, 16)
    a, b = proj[..., :8:2], proj[..., 8::2]  # strided views
    A_log, dt_bias = torch.randn(4), torch.randn(4)
    g, beta = ops.gdn_gating(A_log, a, dt_bias, b, backend=backend)
    g_ref, beta_ref = ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")
    assert_close(g, g_ref, torch.float32, "g")
    assert_close(beta, beta_ref, torch.float32, "beta")


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.randn(4, 1), torch.randn(2, 4), torch.randn(4), torch.randn(2, 4)), ValueError, "A_log must be 1-D"),
        ((torch.randn(4), torch.randn(2, 4), torch.randn(3), torch.randn(2, 4)), ValueError, "dt_bias must have shape"),
        ((torch.randn(4), torch.randn(2, 4), torch.randn(4), torch.randn(2, 5)), ValueError, "b must have shape"),
        # a wrong-length A_log is reported as A_log (the head count comes from a), not as dt_bias
        ((torch.randn(4), torch.randn(2, 3), torch.randn(4), torch.randn(2, 3)), ValueError, r"A_log must have shape \[3\]"),
        ((torch.randn(3), torch.randn(2, 4), torch.randn(4), torch.randn(2, 4)), ValueError, r"A_log must have shape \[4\]"),
        ((torch.randn(4), torch.randn(2, 4), torch.randn(5), torch.randn(2, 4)), ValueError, r"dt_bias must have shape \[4\]"),
        ((torch.randn(4), torch.randint(0, 2, (2, 4)), torch.randn(4), torch.randn(2, 4)), TypeError, "a must have dtype"),
    ],
)
def test_bad_inputs(args, error, match):
    with pytest.raises(error, match=match) as info:
        ops.gdn_gating(*args, backend="torch")
    assert "gdn_gating" in str(info.value)


def test_head_major_needs_3d():
    with pytest.raises(ValueError, match="gdn_gating: head_major"):
        ops.gdn_gating(torch.randn(4), torch.randn(5, 4), torch.randn(4), torch.randn(5, 4), head_major=True)


def test_torch_path_follows_A_log_updates():
    """The torch path keeps -exp(A_log) per parameter: in-place changes and `param.data = ...` are seen."""
    A_log, a, dt_bias, b = inputs((2, 3, 4), torch.float32)
    A_log = torch.nn.Parameter(A_log)
    with torch.no_grad():
        ops.gdn_gating(A_log, a, dt_bias, b, backend="torch")
        A_log.add_(0.5)
        g1, _ = ops.gdn_gating(A_log, a, dt_bias, b, backend="torch")
        assert torch.equal(g1, ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")[0])
        A_log.data = A_log.data * -1.0
        g2, _ = ops.gdn_gating(A_log, a, dt_bias, b, backend="torch")
        assert torch.equal(g2, ops.gdn_gating(A_log, a, dt_bias, b, backend="reference")[0])
