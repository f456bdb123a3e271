"""Bad inputs get clear errors naming the op and what it expected; dispatch picks backends predictably."""
import pytest
import torch

from interns2_fast import device, ops


def gdn(**over):
    args = dict(
        q=torch.randn(1, 4, 2, 8), k=torch.randn(1, 4, 2, 8), v=torch.randn(1, 4, 4, 8),
        g=-torch.rand(1, 4, 4), beta=torch.rand(1, 4, 4),
    )
    args.update(over)
    return args


@pytest.mark.parametrize("fn", [ops.chunk_gated_delta_rule, ops.fused_recurrent_gated_delta_rule])
@pytest.mark.parametrize(
    "over, error, match",
    [
        (dict(q=torch.randn(1, 4, 8)), ValueError, "q must be 4-D"),
        (dict(k=torch.randn(1, 4, 2, 8, dtype=torch.float16)), TypeError, "k must have dtype"),
        (dict(v=torch.randn(1, 4, 3, 8)), ValueError, "multiple of key heads"),
        (dict(g=torch.rand(1, 4, 2)), ValueError, "g must have shape"),
        (dict(q=torch.randint(0, 3, (1, 4, 2, 8))), TypeError, "q must have dtype"),
        (dict(initial_state=torch.zeros(1, 4, 8, 8, dtype=torch.bfloat16)), TypeError, "initial_state"),
        (dict(initial_state=torch.zeros(2, 4, 8, 8)), ValueError, "initial_state must have shape"),
        (dict(cu_seqlens=torch.tensor([0, 4.0])), TypeError, "cu_seqlens"),
        (dict(q=torch.randn(2, 4, 2, 8), k=torch.randn(2, 4, 2, 8), v=torch.randn(2, 4, 4, 8),
              g=torch.rand(2, 4, 4), beta=torch.rand(2, 4, 4), cu_seqlens=torch.tensor([0, 4])),
         ValueError, "batch size must be 1"),
        (dict(q=torch.randn(1, 4, 2, 8, device="meta")), ValueError, "one device"),
    ],
)
def test_gdn_bad_inputs(fn, over, error, match):
    with pytest.raises(error, match=match) as info:
        fn(**gdn(**over), backend="reference")
    assert fn.__name__ in str(info.value)


def test_inplace_state_needs_a_state():
    with pytest.raises(ValueError, match="inplace_final_state"):
        ops.fused_recurrent_gated_delta_rule(**gdn(), inplace_final_state=True)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.causal_conv1d_fn(torch.randn(2, 8), torch.randn(8, 4)), "x must be 3-D"),
        (lambda: ops.causal_conv1d_fn(torch.randn(1, 8, 5), torch.randn(6, 4)), "weight must have shape"),
        (lambda: ops.causal_conv1d_fn(torch.randn(1, 8, 5), torch.randn(8, 4), activation="gelu"), "activation"),
        (lambda: ops.causal_conv1d_fn(torch.randn(1, 8, 5), torch.randn(8, 4), initial_states=torch.randn(1, 8, 2)),
         "initial_states must have shape"),
        (lambda: ops.causal_conv1d_update(torch.randn(1, 8, 1), torch.randn(1, 8, 2), torch.randn(8, 4)),
         "at least W-1"),
        (lambda: ops.causal_conv1d_update(torch.randn(1, 8, 1), torch.randn(2, 8, 3), torch.randn(8, 4)),
         "conv_state must have shape"),
        (lambda: ops.rms_norm_gated(torch.randn(3, 8), torch.randn(3, 4), torch.randn(8)), "gate must have shape"),
        (lambda: ops.rms_norm_gated(torch.randn(3, 8), torch.randn(3, 8), torch.randn(4)), "weight must have shape"),
        (lambda: ops.gdn_gating(torch.randn(4), torch.randn(2, 3), torch.randn(4), torch.randn(2, 3)), "A_log must have shape"),
        (lambda: ops.moe_route(torch.randn(3, 8), torch.randn(4, 8), 5), "top_k"),
        (lambda: ops.moe_route(torch.randn(3, 8), torch.randn(4, 6), 2), "weight must have shape"),
        (lambda: ops.moe_experts(torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2),
                                 torch.randn(4, 6, 8), torch.randn(4, 8, 4)), "down_proj must have shape"),
        (lambda: ops.moe_experts(torch.randn(3, 8), torch.zeros(3, 2), torch.rand(3, 2),
                                 torch.randn(4, 6, 8), torch.randn(4, 8, 3)), "topk_ids must have dtype"),
        (lambda: ops.moe_experts(torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2),
                                 torch.randn(4, 5, 8), torch.randn(4, 8, 2)), "must be even"),
    ],
)
def test_other_ops_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ops.rms_norm_gated(torch.randn(2, 8), torch.randn(2, 8), torch.ones(8), backend="cuda")


def test_triton_backend_needs_a_device_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend 'triton' cannot take these arguments: Triton cannot launch on cpu"):
        ops.rms_norm_gated(torch.randn(2, 8), torch.randn(2, 8), torch.ones(8), backend="triton")


def test_auto_never_picks_triton_or_npu_native_on_cpu():
    for op in ("chunk_gated_delta_rule", "rms_norm_gated", "moe_experts"):
        chosen = ops.resolve(op, "auto", torch.device("cpu"))
        assert chosen in ("torch", "reference")
        if "torch" in ops.registered(op):
            assert chosen == "torch"
    assert device.auto_backends(torch.device("cpu")) == ("torch", "reference")


def test_unregistered_backend_names_what_exists():
    with pytest.raises(NotImplementedError, match="npu_native"):
        ops.resolve("gdn_gating", "npu_native", torch.device("cpu"))
