"""`patch(model)` / `unpatch(model)` and the PatchReport."""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from .. import ops
from . import discovery, gdn, moe_block
from .state import (FAMILIES, FAMILY_OPS, ModuleState, VerifyRecord, get_state, install, patched_states,
                    uninstall)

logger = logging.getLogger("interns2_fast")


@dataclasses.dataclass
class PatchedModule:
    path: str
    op: str  # op family: gdn | conv | norm | moe
    backend: str  # the backend that runs on this module's device ("torch", "triton", ...)
    module_type: str


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
            text += f"; verify: {len(self.verify) - len(bad)} ok, {len(bad)} beyond tolerance"
        return text

    def to_markdown(self) -> str:
        lines = ["| module | op | backend | type |", "|---|---|---|---|"]
        lines += [f"| `{p.path}` | {p.op} | {p.backend} | {p.module_type} |" for p in self.patched]
        if self.skipped:
            lines += ["", "| skipped | op | reason |", "|---|---|---|"]
            lines += [f"| `{s.path}` | {s.op} | {s.reason} |" for s in self.skipped]
        if self.verify:
            lines += ["", "| verified | op | dtype | rms ratio | max abs | ok | action |", "|---|---|---|---|---|---|---|"]
            lines += [f"| `{r.path}` | {r.op} | {r.dtype} | {r.rms_ratio:.2e} | {r.max_abs:.2e} | {r.ok} | {r.action} |"
                      for r in self.verify]
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


def _resolve(family: str, backend: str, device: torch.device) -> str:
    name, _ = ops.resolve(FAMILY_OPS[family], backend, device)
    return name


def patch(model: nn.Module, *, ops: tuple[str, ...] | list[str] = FAMILIES, backend: str = "auto",
          verify: bool | str = False, fix_legacy_continuation: bool = False,
          static_decode: bool | str = True) -> PatchReport:
    """Make `model` use interns2_fast's kernels; returns a PatchReport.

    ops: op families to replace — "gdn" (gating + chunked/recurrent gated delta rule), "conv" (causal
    conv1d prefill/update), "norm" (gated RMSNorm), "moe" (router + experts + sparse-MoE block).
    backend: "auto" (Triton on an NPU/GPU, the PyTorch path on the CPU), "triton", "torch" or
    "reference" (the transformers fallback semantics, through the patched code path).
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"interns2_fast.patch: expected a torch.nn.Module, got {type(model).__name__}")

    patched: list[PatchedModule] = []
    skipped: list[SkippedModule] = []
    states: list[ModuleState] = []
    resolved_cache: dict = {}

    def resolved(family, module):
        dev = _device_of(module)
        key = (family, dev)
        if key not in resolved_cache:
            try:
                resolved_cache[key] = (_resolve(family, backend, dev), None)
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                resolved_cache[key] = (None, str(exc))
        return resolved_cache[key]

    for cand in discovery.find_candidates(model):
        mtype = type(cand.module).__name__
        fams = {"gdn": ("gdn", "conv"), "norm": ("norm",), "moe_block": ("moe",)}[cand.kind]
        wanted = [f for f in fams if f in ops_set]
        if not wanted:
            continue
        if cand.reason is not None:
            skipped += [SkippedModule(cand.path, f, cand.reason, mtype) for f in wanted]
            continue
        if cand.kind == "moe_block":
            reason = moe_block.skip_reason(cand.module)
            if reason is not None:
                skipped.append(SkippedModule(cand.path, "moe", reason, mtype))
                continue
        backends: dict[str, str] = {}
        rows = []
        for fam in wanted:
            name, err = resolved(fam, cand.module)
            if name is None:
                skipped.append(SkippedModule(cand.path, fam, err, mtype))
            else:
                backends[fam] = backend
                rows.append((fam, name))
        if not backends:
            continue
        if cand.kind == "gdn":
            st = install(cand.module, dict(path=cand.path, kind="gdn", backends=backends, verify=verify,
                                           extra=dict(gdn.gdn_extra(cand.module, cand.layout),
                                                      continue_state=fix_legacy_continuation)), gdn.gdn_forward)
            installed = [(cand.path, cand.module, st)]
        elif cand.kind == "norm":
            st = install(cand.module, dict(path=cand.path, kind="norm", backends=backends, verify=verify),
                         gdn.norm_forward)
            installed = [(cand.path, cand.module, st)]
        else:
            installed = [(path, m, st) for (path, st), m in
                         zip(moe_block.install_moe(install, cand.path, cand.module, backends, verify),
                             (cand.module.gate, cand.module))]
        for path, m, st in installed:
            states.append(st)
            patched += [PatchedModule(path, fam, name, type(m).__name__) for fam, name in rows]

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
