"""Numerics: compare the patched path with the reference path.

* `compare_tensors(out, ref)` — RMS ratio rms(out - ref) / rms(ref) and max |out - ref|, judged
  against `VERIFY_TOLERANCES` for the dtype (what verify mode uses);
* `check(model, inputs, top_k=10)` — the reference path and the patched path on the same prompts:
  per prompt the top-k next tokens side by side, plus top-1 agreement, max |Δp|, KL divergence and
  max |Δlogit| over all positions (`NumericsReport`, rendered as Markdown or rich tables).
"""
from __future__ import annotations

import dataclasses

import torch

from .compare import _PRECISION, VERIFY_TOLERANCES, Comparison, compare_tensors  # noqa: F401  (re-exported)
from .host_sync import HOST_SYNC_EVENTS, count_host_syncs  # noqa: F401  (re-exported)


# --- check(): reference path vs patched path on real prompts --------------------------------------

DEFAULT_PROMPT = "What is 2 + 3? Answer with just the number."


@dataclasses.dataclass
class TokenRow:
    rank: int
    token: str
    id: int
    p_reference: float
    p_patched: float

    @property
    def dp(self) -> float:
        return self.p_patched - self.p_reference


@dataclasses.dataclass
class PromptNumerics:
    """One prompt: the next-token top-k side by side, and statistics over all positions."""

    prompt: str
    num_tokens: int
    top: list[TokenRow]
    next_top1_reference: int
    next_top1_patched: int
    top1_agreement: float  # fraction of positions whose argmax agrees
    max_dp: float  # max |p_patched - p_reference| over positions and vocabulary
    kl_mean: float  # KL(reference || patched), mean over positions
    kl_max: float
    max_dlogit: float

    @property
    def next_token_agrees(self) -> bool:
        return self.next_top1_reference == self.next_top1_patched


@dataclasses.dataclass
class NumericsReport:
    """What `check()` measured; `to_markdown()` gives the table to paste into a deployment report."""

    prompts: list[PromptNumerics]
    model: str
    dtype: str
    device: str
    backends: str
    top_k: int

    @property
    def ok(self) -> bool:
        """Every prompt's next token (top-1) is the same on both paths."""
        return all(p.next_token_agrees for p in self.prompts)

    @property
    def top1_agreement(self) -> float:
        total = sum(p.num_tokens for p in self.prompts)
        return sum(p.top1_agreement * p.num_tokens for p in self.prompts) / max(total, 1)

    @property
    def max_dp(self) -> float:
        return max((p.max_dp for p in self.prompts), default=0.0)

    @property
    def kl_max(self) -> float:
        return max((p.kl_max for p in self.prompts), default=0.0)

    @property
    def max_dlogit(self) -> float:
        return max((p.max_dlogit for p in self.prompts), default=0.0)

    def summary(self) -> str:
        return (f"top-1 agreement {100 * self.top1_agreement:.2f}% over all positions; max |Δp| {self.max_dp:.3e}; "
                f"max KL {self.kl_max:.3e}; max |Δlogit| {self.max_dlogit:.3e}; next token "
                f"{'identical' if self.ok else 'DIFFERS'} for {len(self.prompts)} prompt(s)")

    def to_markdown(self) -> str:
        lines = [f"**interns2_fast check** — {self.model}, {self.dtype} on {self.device}, patched backends: "
                 f"{self.backends}", ""]
        for n, p in enumerate(self.prompts, 1):
            lines += [f"Prompt {n} ({p.num_tokens} tokens): {p.prompt!r}", "",
                      "| rank | token | id | reference p | patched p | Δp |", "|---:|---|---:|---:|---:|---:|"]
            lines += [f"| {r.rank} | {_md_token(r.token)} | {r.id} | {r.p_reference:.4f} | {r.p_patched:.4f} | "
                      f"{r.dp:+.2e} |" for r in p.top]
            lines += ["", f"top-1 agreement {100 * p.top1_agreement:.2f}% ({p.num_tokens} positions) · "
                          f"max |Δp| {p.max_dp:.2e} · KL mean {p.kl_mean:.2e} / max {p.kl_max:.2e} · "
                          f"max |Δlogit| {p.max_dlogit:.2e}", ""]
        return "\n".join(lines + [self.summary()])

    def rich_tables(self):
        from rich.table import Table

        tables = []
        for n, p in enumerate(self.prompts, 1):
            t = Table(title=f"prompt {n}: {p.prompt[:90]!r} ({p.num_tokens} tokens) — next-token top-{self.top_k}",
                      caption=f"top-1 agreement {100 * p.top1_agreement:.2f}% · max |Δp| {p.max_dp:.2e} · "
                              f"KL mean {p.kl_mean:.2e} / max {p.kl_max:.2e} · max |Δlogit| {p.max_dlogit:.2e}")
            for col, just in (("rank", "right"), ("token", "left"), ("id", "right"), ("reference p", "right"),
                              ("patched p", "right"), ("Δp", "right")):
                t.add_column(col, justify=just)
            for r in p.top:
                t.add_row(str(r.rank), repr(r.token), str(r.id), f"{r.p_reference:.4f}", f"{r.p_patched:.4f}",
                          f"{r.dp:+.2e}")
            tables.append(t)
        return tables

    def __str__(self) -> str:
        return self.to_markdown()


def _md_token(token: str) -> str:
    return "`" + repr(token)[1:-1].replace("|", "\\|").replace("`", "'") + "`"


def byte_token_ids(text: str, vocab_size: int) -> list[int]:
    """Token ids for a model without a tokenizer (the built-in default model): the UTF-8 bytes."""
    return [b % vocab_size for b in text.encode("utf-8")]


def byte_token_text(token_id: int) -> str:
    return chr(token_id) if 32 <= token_id < 127 else f"<{token_id}>"


def _as_prompts(inputs, tokenizer, vocab_size):
    """[(label, ids list)] from a string / strings / ids tensor / BatchEncoding / list of id lists."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, dict) or hasattr(inputs, "keys"):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        rows = []
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][torch.as_tensor(mask)[i].bool()]
            rows.append(row.tolist())
        return [(_label(r, tokenizer), r) for r in rows]
    if isinstance(inputs, torch.Tensor):
        ids = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
        return [(_label(r, tokenizer), r) for r in ids.tolist()]
    prompts = []
    for item in inputs:
        if isinstance(item, str):
            if tokenizer is None:
                prompts.append((item, byte_token_ids(item, vocab_size)))
            else:
                prompts.append((item, tokenizer(item)["input_ids"]))
        else:
            ids = item.tolist() if isinstance(item, torch.Tensor) else list(item)
            prompts.append((_label(ids, tokenizer), ids))
    return prompts


def _label(ids, tokenizer) -> str:
    if tokenizer is not None:
        return tokenizer.decode(ids)
    text = "".join(byte_token_text(i) if i < 256 else f"<{i}>" for i in ids)
    return text


def _input_device(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001
        return next(model.parameters()).device


@torch.no_grad()
def check(model, inputs, *, top_k: int = 10, tokenizer=None, backend: str = "auto") -> NumericsReport:
    """Run the reference path and the patched path of `model` on the same prompts and compare.

    inputs: a string or list of strings (tokenized with `tokenizer`; without one, the UTF-8 bytes are
    the token ids — what the built-in default model uses), a [B, T] / [T] tensor of ids, a list of id
    lists, or a tokenizer's BatchEncoding (padding removed with its attention_mask). Each prompt runs
    as its own batch of one. The reference path is the model's original forwards (patched modules
    switched off with `reference_mode`); the patched path is the model as patched. A model that is
    not patched is patched for the call (`backend`) and unpatched afterwards.

    Per prompt: the top-k next tokens by reference probability with both probabilities and Δp; over
    all positions: top-1 agreement, max |Δp|, KL(reference || patched) mean and max, max |Δlogit|.
    """
    from .patching import is_patched, last_report, patch, reference_mode, unpatch

    temporary = not is_patched(model)
    if temporary:
        patch(model, backend=backend)
    try:
        report = last_report(model)
        backends = ", ".join(sorted({f"{p.op}={p.backend}" for p in report.patched})) if report else "?"
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 256
        dev = _input_device(model)
        results = []
        for label, ids in _as_prompts(inputs, tokenizer, vocab):
            x = torch.tensor([ids], dtype=torch.long, device=dev)
            with reference_mode(model):
                ref = model(x, use_cache=False).logits[0].float()
            got = model(x, use_cache=False).logits[0].float()
            results.append(_compare_logits(label, ref, got.to(ref.device), top_k, tokenizer))
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        return NumericsReport(results, f"{type(model).__name__} ({name})", dtype, str(dev), backends, top_k)
    finally:
        if temporary:
            unpatch(model)


def _compare_logits(label, ref, got, top_k, tokenizer) -> PromptNumerics:
    ref, got = ref.double(), got.double()  # KL of nearly equal distributions needs fp64 to be meaningful
    logp_ref, logp_got = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    p_ref, p_got = logp_ref.exp(), logp_got.exp()
    kl = (p_ref * (logp_ref - logp_got)).sum(-1).clamp_min(0)
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    k = min(top_k, ref.shape[-1])
    top_p, top_i = torch.topk(p_ref[-1], k)
    rows = []
    for rank, (p, i) in enumerate(zip(top_p.tolist(), top_i.tolist()), 1):
        text = tokenizer.decode([i]) if tokenizer is not None else byte_token_text(i)
        rows.append(TokenRow(rank, text, i, p, p_got[-1, i].item()))
    return PromptNumerics(
        prompt=label, num_tokens=ref.shape[0], top=rows, next_top1_reference=int(ref[-1].argmax()),
        next_top1_patched=int(got[-1].argmax()), top1_agreement=agree, max_dp=(p_got - p_ref).abs().max().item(),
        kl_mean=kl.mean().item(), kl_max=kl.max().item(), max_dlogit=(got - ref).abs().max().item(),
    )
