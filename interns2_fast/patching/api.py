"""`patch(model)` / `unpatch(model)` and the PatchReport."""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from .. import ops as _ops
from . import attention, decoder, discovery
from .families import FAMILY_EXAMPLES, KINDS
from .state import FAMILIES, FAMILY_OPS, ModuleState, VerifyRecord, get_state, install, patched_states, uninstall

logger = logging.getLogger("interns2_fast")


@dataclasses.dataclass
class PatchedModule:
    path: str
    op: str  # op family: gdn | conv | norm | moe
    backend: str  # the backend(s) that run on this module's device ("torch", "triton", "triton+torch")
    module_type: str
    note: str = ""  # why an op runs on another backend than the one asked for


@dataclasses.dataclass
class SkippedModule:
    path: str
    op: str
    reason: str
    module_type: str


@dataclasses.dataclass
class PatchReport:
    """What `patch()` did: every module patched (path, op family, backend) and every candidate skipped
    (with the reason). `verify` lists what verify mode saw so far (it fills in as modules run)."""

    patched: list[PatchedModule]
    skipped: list[SkippedModule]
    ops: tuple[str, ...]
    backend: str
    verify_mode: bool | str
    _states: list[ModuleState] = dataclasses.field(default_factory=list, repr=False)

    @property
    def verify(self) -> list[VerifyRecord]:
        return [r for s in self._states for r in s.verify_log]

    @property
    def reverted(self) -> list[str]:
        """Paths verify put back on the reference path."""
        return [s.path for s in self._states if not s.active]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.patched:
            out[p.op] = out.get(p.op, 0) + 1
        return out

    def summary(self) -> str:
        parts = [f"{n} {op}" for op, n in self.counts().items()]
        backends = sorted({p.backend for p in self.patched})
        text = f"patched {len(self.patched)} module slot(s) ({', '.join(parts) or 'none'}) on backend(s) " \
               f"{', '.join(backends) or '-'}; skipped {len(self.skipped)}"
        if self.verify:
            bad = [r for r in self.verify if not r.ok]
            text += f"; verify: {len(self.verify) - len(bad)} ok, {len(bad)} failed"
        return text

    def to_markdown(self) -> str:
        lines = ["| module | op | backend | type |", "|---|---|---|---|"]
        lines += [f"| `{p.path}` | {p.op} | {p.backend} | {p.module_type} |" for p in self.patched]
        notes = sorted({(p.op, p.note) for p in self.patched if p.note})
        if notes:
            lines += [""] + [f"* {op}: {note}" for op, note in notes]
        if self.skipped:
            lines += ["", "| skipped | op | reason |", "|---|---|---|"]
            lines += [f"| `{s.path}` | {s.op} | {s.reason} |" for s in self.skipped]
        if self.verify:
            lines += ["", "| verified | op | dtype | rms ratio | max abs | ok | action |", "|---|---|---|---|---|---|---|"]
            lines += [f"| `{r.path}` | {r.op} | {r.dtype} | {r.rms_ratio:.2e} | {r.max_abs:.2e} | {r.ok} | {r.action}"
                      f"{f' ({r.reason})' if r.reason else ''} |" for r in self.verify]
        return "\n".join(lines + ["", self.summary()])

    def rich_tables(self, max_rows: int = 40):
        from rich.table import Table

        t = Table(title=f"interns2_fast.patch: ops={','.join(self.ops)} backend={self.backend}")
        for col in ("module", "op", "backend", "type"):
            t.add_column(col)
        for p in self.patched[:max_rows]:
            t.add_row(p.path, p.op, p.backend, p.module_type)
        if len(self.patched) > max_rows:
            t.add_row(f"... {len(self.patched) - max_rows} more", "", "", "")
        tables = [t]
        if self.skipped:
            s = Table(title="skipped candidates")
            for col in ("module", "op", "reason"):
                s.add_column(col)
            for x in self.skipped[:max_rows]:
                s.add_row(x.path, x.op, x.reason)
            tables.append(s)
        if self.verify:
            v = Table(title="verify (first call of each patched op vs the reference path)")
            for col in ("module", "op", "dtype", "rms ratio", "max abs", "ok", "action"):
                v.add_column(col)
            for r in self.verify[:max_rows]:
                v.add_row(r.path, r.op, r.dtype, f"{r.rms_ratio:.2e}", f"{r.max_abs:.2e}", str(r.ok), r.action)
            tables.append(v)
        return tables

    def __str__(self) -> str:
        return self.to_markdown()


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters(recurse=True):
        return p.device
    return torch.device("cpu")


def _choose(op_name: str, backend: str, device: torch.device, example: dict) -> tuple[str, str, str]:
    """(backend to pass at run time, backend that will run, note) for one op of a module.

    The capability predicates are evaluated on `example` (meta tensors shaped like the module's
    calls). An explicit backend that cannot take them falls back to `auto` for this op, with a note;
    ValueError when no backend can.
    """
    op = _ops.OPS[op_name]
    if backend == "auto":
        return "auto", op.select("auto", device, example), ""
    try:
        return backend, op.select(backend, device, example), ""
    except (ValueError, NotImplementedError) as exc:
        runs = op.select("auto", device, example)
        why = str(exc)
        for sep in ("cannot take these arguments: ", ": "):
            if sep in why:
                why = why.split(sep, 1)[1]
                break
        return "auto", runs, f"{op_name} runs on {runs} ({why})"


def patch(model: nn.Module, *, ops: tuple[str, ...] | list[str] = FAMILIES, backend: str = "auto",
          verify: bool | str = False, fix_legacy_continuation: bool = False,
          static_decode: bool | str = True) -> PatchReport:
    """Make `model` use interns2_fast's kernels; returns a PatchReport.

    ops: op families to replace — "gdn" (gating + chunked/recurrent gated delta rule), "conv" (causal
    conv1d prefill/update), "norm" (gated RMSNorm), "moe" (router + experts + sparse-MoE block),
    "rmsnorm" (decoder layers: each residual add fused with the (1 + w) RMSNorm after it; final norm),
    "attention" (full-attention layers: q/k norm + rotary + KV write and the gated GQA attention as two ops
    on a static-cache decode step; everything else runs the layer's own forward).
    backend: "auto" (per op, the first backend whose capability predicate holds for this module's
    shapes and device: Triton on an NPU/GPU, the PyTorch path on the CPU), or one of
    `interns2_fast.ops.BACKENDS` ("triton", "torch", "reference" = the transformers fallback
    semantics through the patched code path, ...). An op that the requested backend lacks or cannot
    take for this module's shapes runs on what `auto` picks instead; the report says so per module.
    verify: True runs the reference path beside the patched one on each patched op's first call
    and, beyond tolerance (numerics.VERIFY_TOLERANCES), warns and puts that module back on the
    reference path; "strict" raises `VerifyError` instead. The report's `verify` lists what it saw.

    fix_legacy_continuation: transformers 5.2-5.14 (and the Intern-S2-Preview remote code, a copy of
    5.2) restart the linear-attention state when a cached conversation continues with several new
    tokens at once (a second generate() reusing past_key_values). By default the patched layers do
    the same (patched == reference); True makes them continue from the cached state (as 5.15+ does).

    static_decode: True (default) makes `model.generate()` decode through preallocated caches and one
    fixed-address step, captured in a device graph on CUDA / Ascend (`interns2_fast.decode`); "eager",
    "graph" or "compile" pick the runner; False keeps transformers' decode loop.

    Modules are found by structure (see `patching.discovery`), so transformers' qwen3_5_moe,
    qwen3_5, qwen3_next and the Intern-S2-Preview remote code all work. Only this model's module
    instances are changed; calling patch() again is harmless: the model then has exactly the patch
    the last call describes (settings updated in place, families no longer requested restored);
    `unpatch(model)` restores the original forwards.
    """
    ops_set = tuple(dict.fromkeys(ops))
    unknown = [o for o in ops_set if o not in FAMILIES]
    if unknown:
        raise ValueError(f"interns2_fast.patch: unknown op families {unknown}; expected a subset of {FAMILIES}")
    if verify not in (False, True, "strict"):
        raise ValueError(f"interns2_fast.patch: verify must be False, True or 'strict', got {verify!r}")
    if static_decode not in (True, False, "eager", "graph", "compile"):
        raise ValueError(f"interns2_fast.patch: static_decode must be True, False, 'eager', 'graph' or 'compile', "
                         f"got {static_decode!r}")
    if backend != "auto" and backend not in _ops.BACKENDS:
        raise ValueError(f"interns2_fast.patch: unknown backend {backend!r}; expected 'auto' or one of {_ops.BACKENDS}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"interns2_fast.patch: expected a torch.nn.Module, got {type(model).__name__}")

    patched: list[PatchedModule] = []
    skipped: list[SkippedModule] = []
    states: list[ModuleState] = []
    settings = dict(fix_legacy_continuation=fix_legacy_continuation)

    for cand in discovery.find_candidates(model):
        mtype = type(cand.module).__name__
        kind = KINDS[cand.kind]
        wanted = [f for f in kind.families if f in ops_set]
        if not wanted:
            continue
        reason = cand.reason if cand.reason is not None else kind.skip(cand.module)
        if reason is not None:
            skipped += [SkippedModule(cand.path, f, reason, mtype) for f in wanted]
            continue
        dev = _device_of(cand.module)
        backends: dict[str, str] = {}  # op -> backend passed at run time
        rows = []
        for fam in wanted:
            examples = FAMILY_EXAMPLES[fam](cand.module)
            try:
                chosen = {op: _choose(op, backend, dev, examples[op]) for op in FAMILY_OPS[fam]}
            except (ValueError, NotImplementedError) as exc:
                skipped.append(SkippedModule(cand.path, fam, str(exc), mtype))
                continue
            backends.update({op: run for op, (run, _, _) in chosen.items()})
            runs = "+".join(dict.fromkeys(r for _, r, _ in chosen.values()))
            rows.append((fam, runs, "; ".join(n for _, _, n in chosen.values() if n)))
        if not backends:
            continue
        for path, m, st in kind.install(install, cand.path, cand.module, backends, verify, settings, cand.layout):
            states.append(st)
            patched += [PatchedModule(path, fam, runs, type(m).__name__, note) for fam, runs, note in rows]

    if "rmsnorm" in ops_set:  # decoder layers: residual adds fused into the norms (patching/decoder.py)
        notes: dict[int, str] = {}

        def resolved(family, module):
            try:
                _, runs, note = _choose("add_rms_norm", backend, _device_of(module),
                                        FAMILY_EXAMPLES[family](module)["add_rms_norm"])
            except (ValueError, NotImplementedError) as exc:
                return None, str(exc)
            notes[id(module)] = note
            return runs, None

        done, skip = decoder.install_decoder(install, model, backend, verify, resolved)
        states += [st for _, _, st, _ in done]
        patched += [PatchedModule(p, "rmsnorm", name, type(m).__name__, notes.get(id(m), ""))
                    for p, m, _, name in done]
        skipped += [SkippedModule(p, "rmsnorm", why, type(m).__name__) for p, m, why in skip]

    if "attention" in ops_set:  # full-attention layers: the static decode step in two launches (patching/attention.py)
        done, skip = attention.install_attention(
            install, model, verify, lambda op, m, example: _choose(op, backend, _device_of(m), example))
        states += [st for _, _, st, _, _ in done]
        patched += [PatchedModule(p, "attention", runs, type(m).__name__, note) for p, m, _, runs, note in done]
        skipped += [SkippedModule(p, "attention", why, type(m).__name__) for p, m, why in skip]

    # a repeated call describes the whole patch: modules patched before but not matched now go back
    keep = {id(s) for s in states}
    for m in model.modules():
        st = get_state(m)
        if st is not None and id(st) not in keep:
            uninstall(m)
    report = PatchReport(patched, skipped, ops_set, backend, verify, states)
    model.__dict__["_interns2_fast_report"] = report
    from .. import decode

    decode.install(model, static_decode)
    logger.info("interns2_fast: %s", report.summary())
    return report


def unpatch(model: nn.Module) -> int:
    """Restore every patched module of `model` to its original forward; returns how many were restored."""
    n = sum(uninstall(m) for m in model.modules())
    model.__dict__.pop("_interns2_fast_report", None)
    from .. import decode

    decode.uninstall(model)
    return n


def is_patched(model: nn.Module) -> bool:
    return any(get_state(m) is not None for m in model.modules())


def last_report(model: nn.Module) -> PatchReport | None:
    """The report of the last `patch()` call on `model` (None if it is not patched)."""
    return model.__dict__.get("_interns2_fast_report")


__all__ = ["PatchReport", "PatchedModule", "SkippedModule", "patch", "unpatch", "is_patched", "last_report",
           "patched_states"]
