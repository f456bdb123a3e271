"""PyTorch backend of `moe_experts`: the packed SwiGLU expert FFNs without transformers' eager loop.

The eager reference builds a one-hot mask over all E experts, reads the hit experts back to the
host (`nonzero`) and runs ~10 small ops per hit expert. Weights are always read as stored
(`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), never transposed or copied whole; fp32
accumulation of the k contributions; the shared expert's `sigmoid(gate_logit) * shared_out` is
added in the same fp32 pass when given. How the GEMMs run depends on where the tensors live:

  * CPU (`_experts_cpu`): one stable argsort groups the slots by expert; the group sizes are in
    host memory already (reading them is no device sync); per hit expert: gather its rows, two
    GEMMs (F.linear), weight, `index_add_` into an fp32 [T, H] accumulator (sequential on the CPU:
    bit-reproducible; in fp32 bit-equal to the eager loop). That is a Python loop over the hit
    experts, chosen on measurement (2 EPYC cores, fp32, full Intern-S2 shapes): the work is GEMM-
    bound at T >= 512 (each expert's ~16 rows at T = 512 run at 30-40 GFLOP/s per core whatever the
    formulation), torch's CPU `_grouped_mm` is a naive kernel (~2 GMAC/s, 7x slower than the loop
    at T = 512), a padded `bmm` over a capacity doubles the FLOPs, gathering per-slot weights for a
    `bmm` copies 8-12 MB per slot, and [T*k, H] sorted buffers cost more in first-touch page faults
    than they save. What this path removes is the one-hot / `where` / per-expert bookkeeping.
  * accelerators, decode (T*k <= DECODE_SLOTS): one `bmm` over the slots with the selected
    experts' weights gathered (`gate_up_proj[ids]`): reads only the experts picked, no host read.
  * accelerators, prefill: slots sorted by expert (stable argsort, counts by scatter_add: no host
    read), `F.grouped_mm` / `torch._grouped_mm` over the sorted rows with device-side offsets (CUDA
    bf16), then the k rows of each token summed in the fixed order j = 0..k-1. Where grouped_mm does
    not take the dtype/device (fp32 on CUDA, NPUs: use the triton or npu_native backend there), the
    per-group GEMMs run after ONE host read of the group sizes per call.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: Up to this many (token, expert) slots, accelerators use the gathered-weights bmm (decode).
DECODE_SLOTS = 64


def _add_shared(out32: torch.Tensor, shared_expert_output: torch.Tensor | None,
                shared_expert_gate: torch.Tensor | None) -> torch.Tensor:
    """out32 + sigmoid(gate) * shared (fp32), when a shared expert output is given."""
    if shared_expert_output is not None:
        s = shared_expert_output.float()
        if shared_expert_gate is not None:
            s = torch.sigmoid(shared_expert_gate.reshape(-1, 1).float()) * s
        out32 = out32 + s
    return out32


def _combine(y_slots: torch.Tensor, T: int, k: int, out_dtype: torch.dtype,
             shared_expert_output: torch.Tensor | None, shared_expert_gate: torch.Tensor | None) -> torch.Tensor:
    """Sum each token's k weighted rows in slot order (fixed order), plus the gated shared expert; fp32."""
    out = y_slots.view(T, k, -1).sum(dim=1, dtype=torch.float32)
    return _add_shared(out, shared_expert_output, shared_expert_gate).to(out_dtype)


def _bmm_slots(x_slots: torch.Tensor, ids: torch.Tensor, gate_up_proj: torch.Tensor,
               down_proj: torch.Tensor) -> torch.Tensor:
    """Per-slot FFN with the selected experts' weights gathered: [S, H] -> [S, H] (input dtype)."""
    gu = torch.bmm(x_slots.unsqueeze(1), gate_up_proj[ids].transpose(1, 2)).squeeze(1)  # [S, 2I]
    gate, up = gu.chunk(2, dim=-1)
    h = F.silu(gate) * up
    return torch.bmm(h.unsqueeze(1), down_proj[ids].transpose(1, 2)).squeeze(1)  # [S, H]


def _grouped_loop(x_sorted: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[rows of group e] = x_sorted[rows] @ weight[e]^T, groups in expert order (`counts` on the CPU).
    Only for accelerators without a grouped GEMM (after one host read of the counts)."""
    pieces = []
    start = 0
    for e, c in enumerate(counts.tolist()):  # host memory already: not a device sync
        if c:
            # F.linear (not mm into an out= slice): MKL-DNN's path, ~1.3x faster at 16 rows.
            pieces.append(F.linear(x_sorted[start:start + c], weight[e]))
            start += c
    if not pieces:
        return x_sorted.new_empty(0, weight.shape[1])
    return torch.cat(pieces)


def _experts_cpu(hidden, flat_ids, w_flat, k, gate_up_proj, down_proj) -> torch.Tensor:
    """CPU: per hit expert, gather its rows, two GEMMs, weight, accumulate into fp32 [T, H].

    `index_add_` on the CPU adds the rows one index after another: the sum order (by expert, then
    by slot) is fixed, so results are bit-reproducible (and in fp32 equal to the eager loop's). All
    temporaries are one expert's rows (cache-sized): no [T*k, H] buffers, whose first touch costs
    more than the GEMMs save at T >= 512 on this kind of machine.
    """
    T, H = hidden.shape
    inter = down_proj.shape[2]
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=gate_up_proj.shape[0]).tolist()  # host memory: no sync
    tok_sorted = order // k
    w_sorted = w_flat[order].unsqueeze(1)
    out = torch.zeros(T, H, dtype=torch.float32, device=hidden.device)
    start = 0
    for e, c in enumerate(counts):
        if c:
            tok = tok_sorted[start:start + c]
            gu = F.linear(hidden.index_select(0, tok), gate_up_proj[e])
            y = F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], down_proj[e])
            out.index_add_(0, tok, y.float() * w_sorted[start:start + c])
            start += c
    return out


def _grouped_mm_fn():
    fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    return fn


def moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, *,
                shared_expert_output=None, shared_expert_gate=None):
    T, H = hidden.shape
    k = topk_ids.shape[1]
    E = gate_up_proj.shape[0]
    S = T * k
    flat_ids = topk_ids.reshape(-1).long()
    w_slots = topk_weights.reshape(-1, 1).float()
    if hidden.device.type == "cpu":
        out = _experts_cpu(hidden, flat_ids, w_slots.reshape(-1), k, gate_up_proj, down_proj)
        return _add_shared(out, shared_expert_output, shared_expert_gate).to(hidden.dtype)
    # On a device the ids are not read back (interns2_fast.ops.moe_experts checks host tensors):
    # an id outside [0, E) is clamped for the weight gather and its slot gets weight 0, as the
    # Triton kernels drop it, instead of a device-side indexing fault.
    valid = (flat_ids >= 0) & (flat_ids < E)
    flat_ids = flat_ids.clamp(0, E - 1)
    w_slots = torch.where(valid.unsqueeze(1), w_slots, 0.0)

    if S <= DECODE_SLOTS:
        y = _bmm_slots(hidden.repeat_interleave(k, dim=0), flat_ids, gate_up_proj, down_proj)
        return _combine(y.float() * w_slots, T, k, hidden.dtype, shared_expert_output, shared_expert_gate)

    order = torch.argsort(flat_ids, stable=True)  # slots grouped by expert, stable inside a group
    x_sorted = hidden.index_select(0, order // k)
    # scatter_add, not bincount: bincount reads the max id back to the host on accelerators.
    counts = torch.zeros(E, dtype=torch.int64, device=hidden.device)
    counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids))

    y_sorted = None
    gmm = _grouped_mm_fn()
    if gmm is not None:
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        try:
            gu = gmm(x_sorted, gate_up_proj.transpose(-2, -1), offs=offs)
            gate, up = gu.chunk(2, dim=-1)
            y_sorted = gmm(F.silu(gate) * up, down_proj.transpose(-2, -1), offs=offs)
        except (RuntimeError, NotImplementedError):  # dtype / device the kernel does not take
            y_sorted = None
    if y_sorted is None:  # no grouped GEMM for this device/dtype: one host read of the counts
        counts_host = counts.cpu()
        gu = _grouped_loop(x_sorted, counts_host, gate_up_proj)
        gate, up = gu.chunk(2, dim=-1)
        y_sorted = _grouped_loop(F.silu(gate) * up, counts_host, down_proj)

    y = torch.empty_like(y_sorted, dtype=torch.float32)
    y[order] = y_sorted.float() * w_slots[order]  # back to slot order t*k + j
    return _combine(y, T, k, hidden.dtype, shared_expert_output, shared_expert_gate)


def _shared_hidden(hidden, shared_gate_proj, shared_up_proj):
    return F.silu(F.linear(hidden, shared_gate_proj)) * F.linear(hidden, shared_up_proj)


def _gathered_decode(hidden, flat_ids, w_slots, k, gate_up_proj, down_proj, shared_out):
    """Decode-sized T*k: the k routed slots of each token with the selected experts' weights
    gathered (`index_select` of the packed weights: reads only the experts picked, no host read).

    gate|up of the k slots of token t is ONE matmul of its row with the gathered [k * 2I, H] rows;
    the k down GEMVs are one `bmm`; the routing-weighted sum over the k slots and the shared
    expert's add are ONE `baddbmm` ([1, k] weights x [k, H] rows + shared, fp32 accumulation).
    8 ATen ops whatever k.
    """
    T, H = hidden.shape
    inter = down_proj.shape[2]
    S = T * k
    # row-vector x matrix^T orientation: 3-6x faster on the CPU than the matrix x column form
    gu = torch.bmm(hidden.unsqueeze(1), gate_up_proj.index_select(0, flat_ids).view(T, k * 2 * inter, H).transpose(1, 2))
    gate, up = gu.view(T, k, 2 * inter).split(inter, dim=-1)
    h = F.silu(gate) * up  # [T, k, I], hidden's dtype (as the eager loop rounds it)
    y = torch.bmm(h.reshape(S, 1, inter), down_proj.index_select(0, flat_ids).transpose(1, 2))  # [S, 1, H]
    return torch.baddbmm(shared_out.unsqueeze(1), w_slots.reshape(T, 1, k).to(hidden.dtype),
                         y.view(T, k, H)).view(T, H)


#: CPU decode: up to this many bytes of selected expert weights are gathered (`_gathered_decode`);
#: above it `grouped_mm` reads them in place (at Intern-S2 width, 24 MB per token in bf16, the
#: gather's copy costs several times the memory-bound GEMMs).
CPU_GATHER_BYTES = 1 << 21


@functools.lru_cache(maxsize=None)
def _expert_range(num_experts: int, device: torch.device) -> torch.Tensor:
    return torch.arange(num_experts, dtype=torch.int64, device=device)


def _grouped_decode(gmm, hidden, flat_ids, w_flat, k, gate_up_proj, down_proj, shared_out):
    """Decode-sized T*k on the CPU: the k slots of every token through `grouped_mm`, which reads each
    hit expert's weights in place (no gathered copy: at Intern-S2 width a gather of the k experts'
    weights costs more than the GEMMs, which are memory-bound at T*k <= 64), then the weighted
    sum and the shared expert's add as ONE matmul: out = shared + M @ y with M [T, T*k] holding
    each sorted row's routing weight in its token's row. About 13 ATen ops, whatever k."""
    T, H = hidden.shape
    E = gate_up_proj.shape[0]
    sorted_ids, order = torch.sort(flat_ids, stable=True)  # slots grouped by expert
    tok = torch.div(order, k, rounding_mode="floor")
    x_sorted = hidden.index_select(0, tok)
    offs = torch.searchsorted(sorted_ids, _expert_range(E, hidden.device), right=True, out_int32=True)
    gate, up = gmm(x_sorted, gate_up_proj.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
    y = gmm(F.silu(gate) * up, down_proj.transpose(-2, -1), offs=offs)  # [T*k, H], hidden's dtype
    m = torch.zeros(T, T * k, dtype=hidden.dtype, device=hidden.device)
    m.scatter_(0, tok.view(1, -1), w_flat.index_select(0, order).to(hidden.dtype).view(1, -1))
    return torch.addmm(shared_out, m, y)


def moe_experts_shared(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                       shared_down_proj, shared_gate):
    """Routed experts + the sigmoid-gated shared expert (see `interns2_fast.ops.moe_experts_shared`).
    T*k <= DECODE_SLOTS: `_gathered_decode` on every device (no loop over experts, no host read);
    larger T: the shared expert as linears, then `moe_experts` with its gated add in the combine."""
    T, H = hidden.shape
    k = topk_ids.shape[1]
    E = gate_up_proj.shape[0]
    gate_logit = F.linear(hidden, shared_gate)  # [T, 1]
    if T * k > DECODE_SLOTS:
        shared = F.linear(_shared_hidden(hidden, shared_gate_proj, shared_up_proj), shared_down_proj)
        return moe_experts(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, shared_expert_output=shared,
                           shared_expert_gate=gate_logit)
    flat_ids = topk_ids.reshape(-1)
    w_slots = topk_weights
    if hidden.device.type != "cpu":
        # device ids are not read back (the op checks host tensors): clamp for the gather, weight 0
        valid = (flat_ids >= 0) & (flat_ids < E)
        flat_ids = flat_ids.clamp(0, E - 1)
        w_slots = torch.where(valid.view_as(w_slots), w_slots, 0.0)
    shared_h = _shared_hidden(hidden, shared_gate_proj, shared_up_proj) * torch.sigmoid(gate_logit)
    shared_out = F.linear(shared_h, shared_down_proj)
    gmm = _grouped_mm_fn()
    gathered_bytes = T * k * (gate_up_proj[0].numel() + down_proj[0].numel()) * gate_up_proj.element_size()
    if hidden.device.type == "cpu" and gmm is not None and gathered_bytes > CPU_GATHER_BYTES:
        return _grouped_decode(gmm, hidden, flat_ids, w_slots.reshape(-1), k, gate_up_proj, down_proj, shared_out)
    return _gathered_decode(hidden, flat_ids, w_slots, k, gate_up_proj, down_proj, shared_out)
