"""UNVERIFIED NPU-native MoE backend ("npu_native"): torch_npu's fused Ascend C MoE operators.

UNVERIFIED: written from the torch_npu / vllm-ascend public call patterns; it has never run (no
NPU, no torch_npu on any machine of this project). `backend="auto"` never picks it and the test
suite never selects it; without torch_npu every entry point raises a RuntimeError naming torch_npu.

Expert path (`moe_experts`):
  1. `npu_moe_init_routing_v2(hidden, ids int32, active_num=T*k, expert_num=E,
     expert_tokens_num_type=1 (counts), expert_tokens_num_flag=True, active_expert_range=[0, E],
     quant_mode=-1)` -> hidden rows grouped by expert, the row index map, per-expert counts;
  2. `npu_grouped_matmul(x=[rows], weight=[W^T], group_list=counts, group_list_type=1,
     group_type=0, split_item=2)` for gate_up; the weights are passed as transposed VIEWS of the
     stored [E, 2I, H] / [E, H, I] tensors (grouped_matmul takes [E, K, N]; whether it accepts
     non-contiguous views without copying is one of the unverified points);
  3. `npu_swiglu(gate_up, dim=-1)` = silu(first half) * second half (gate rows come first);
  4. the down grouped matmul, then `npu_moe_token_unpermute(out, |row_idx| int32, probs=weights)`
     restores token order and sums the k weighted rows.
The shared expert, when given, is added afterwards (sigmoid-gated), in hidden's dtype.
`moe_route` (not registered; the routing op belongs to its own module) shows the matching
router: logits -> `npu_moe_gating_top_k_softmax` -> renormalise.
"""
from __future__ import annotations

import importlib.util

import torch


def _torch_npu():
    if importlib.util.find_spec("torch_npu") is None:
        raise RuntimeError("moe_experts: backend 'npu_native' needs torch_npu (Ascend NPU), which is not installed; "
                           "use backend='triton' or 'torch'")
    import torch_npu

    return torch_npu


def moe_route(hidden, weight, top_k, *, renormalize=True):
    """(logits, fp32 top-k weights, int64 ids) with torch_npu's fused softmax + top-k. UNVERIFIED."""
    npu = _torch_npu()
    logits = torch.nn.functional.linear(hidden, weight)
    top_w, top_i, _ = npu.npu_moe_gating_top_k_softmax(logits.float(), None, k=top_k)
    if renormalize:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return logits, top_w.float(), top_i.long()


def moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, *, shared_expert_output=None,
                shared_expert_gate=None):
    npu = _torch_npu()
    T, _ = hidden.shape
    k = topk_ids.shape[1]
    E = gate_up_proj.shape[0]
    rows, row_idx, counts, _ = npu.npu_moe_init_routing_v2(
        hidden, topk_ids.to(torch.int32), scale=None, offset=None, active_num=T * k, expert_capacity=-1,
        expert_num=E, drop_pad_mode=0, expert_tokens_num_type=1, expert_tokens_num_flag=True,
        quant_mode=-1, active_expert_range=[0, E], row_idx_type=0)
    counts = counts.to(torch.int64)
    gate_up = npu.npu_grouped_matmul(x=[rows], weight=[gate_up_proj.transpose(1, 2)], group_list=counts,
                                     group_list_type=1, group_type=0, split_item=2)[0]
    act = npu.npu_swiglu(gate_up, dim=-1)
    down = npu.npu_grouped_matmul(x=[act], weight=[down_proj.transpose(1, 2)], group_list=counts,
                                  group_list_type=1, group_type=0, split_item=2)[0]
    out = npu.npu_moe_token_unpermute(down, row_idx.abs().to(torch.int32), probs=topk_weights.to(down.dtype))
    out = out.to(hidden.dtype)
    if shared_expert_output is not None:
        shared = shared_expert_output
        if shared_expert_gate is not None:
            shared = torch.sigmoid(shared_expert_gate.reshape(T, 1)) * shared
        out = out + shared
    return out
