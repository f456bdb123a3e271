"""`interns2-fast bench`: run the benchmark suites, print a Markdown table, write JSON and a plot.

    interns2-fast bench [--suite ops|e2e|counts|all] [--quick] [--out DIR]

* `ops` — `benchmarks/ops/bench_*.py`: one op, every backend, per Intern-S2 shape;
* `e2e` — `benchmarks/e2e/bench_e2e.py`: a full-width Intern-S2 stack, prefill latency and decode
  tokens/s, the transformers reference vs `interns2_fast.patch(model)`, peak memory;
* `counts` — `benchmarks/counts.py`: ATen ops, Triton launches and host syncs per decode token and
  layer (the proxy for NPU eager-mode decode speed);
* `all` — the three.

The suites run in a subprocess through pytest-benchmark (`--benchmark-json`), so that the numbers
are pytest-benchmark's own and a suite can be rerun by hand with the printed command. Under
`--out DIR` this writes `benchmarks.json` (pytest-benchmark's format), `results.md` (the table),
`speedup.png` (speedup against sequence length / batch), `counts.json` / `counts.md`, and `env.json`.

This module also holds the helpers the suite shares (device / dtype selection, synchronisation,
labels, model variants, peak memory); it imports nothing heavy at module level.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Iterable

QUICK_ENV = "INTERNS2_BENCH_QUICK"
SUITES = ("ops", "e2e", "counts", "all")

#: Model variants of the end-to-end and counts suites.
MODEL_VARIANTS = ("reference", "reference-eager", "patched", "patched-triton")

#: Backend order in tables and plots (others follow alphabetically).
BACKEND_ORDER = ("reference", "reference-eager", "torch", "triton", "patched", "patched-triton", "npu_native",
                 "fla", "causal-conv1d", "causal_conv1d", "grouped_mm", "batched_mm")

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


# --- environment: device, dtype, quick ---------------------------------------------------------------

def is_quick() -> bool:
    return os.environ.get(QUICK_ENV) == "1"


def select_device():
    """INTERNS2_BENCH_DEVICE, else CUDA, else an Ascend NPU, else the CPU."""
    import torch

    name = os.environ.get("INTERNS2_BENCH_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    from . import device as _device

    if _device.npu_available():
        return torch.device("npu")
    return torch.device("cpu")


def select_dtype(device):
    """INTERNS2_BENCH_DTYPE, else float32 on the CPU and bfloat16 on accelerators."""
    import torch

    name = os.environ.get("INTERNS2_BENCH_DTYPE")
    if name:
        try:
            return getattr(torch, _DTYPES[name.lower()])
        except KeyError:
            raise ValueError(f"INTERNS2_BENCH_DTYPE={name!r}; expected one of {sorted(_DTYPES)}") from None
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def synchronize(device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]


#: Public alternatives an op benchmark compares on CUDA when installed: backend name -> package.
PUBLIC_ALTERNATIVES = {"fla": "fla", "causal_conv1d": "causal_conv1d"}


def skip_unavailable(backend: str, device) -> None:
    """pytest.skip a benchmark backend that cannot run on `device`: triton only on a CUDA/NPU device
    (the CPU interpreter is a correctness tool, no fast path); the public alternatives only on CUDA
    with their package installed."""
    import importlib.util

    import pytest

    from . import device as _device

    if backend == "triton" and not (device.type != "cpu" and _device.triton_usable(device)):
        pytest.skip("triton: needs a CUDA/NPU device (the CPU interpreter is no fast path)")
    package = PUBLIC_ALTERNATIVES.get(backend)
    if package and (device.type != "cuda" or importlib.util.find_spec(package) is None):
        pytest.skip(f"{backend}: needs CUDA and the {package} package")


def label(benchmark, *, op: str, shape: str, backend: str, device, dtype, **extra) -> None:
    """Set a benchmark's group ("<op> <shape>") and extra_info the way the aggregation expects."""
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, shape=shape, backend=backend, device=str(device),
                                dtype=str(dtype).replace("torch.", ""), **extra)


# --- model variants and memory -----------------------------------------------------------------------

def _set_experts_implementation(model, impl) -> None:
    if impl is None:
        return
    setter = getattr(model, "set_experts_implementation", None)
    if setter is not None:
        setter(impl)
    else:
        model.config._experts_implementation = impl


@contextlib.contextmanager
def model_variant(model, variant: str):
    """Put `model` in the state a variant measures; restore it afterwards. Yields a dict of facts
    about the variant (experts implementation, patch summary) for extra_info.

    reference        the model as transformers built it (its default experts implementation,
                     grouped_mm on torch >= 2.9)
    reference-eager  experts_implementation="eager": the Python loop over hit experts
    patched          interns2_fast.patch(model, backend="auto")
    patched-triton   interns2_fast.patch(model, backend="triton")
    """
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {MODEL_VARIANTS}")
    original = getattr(model.config, "_experts_implementation", None)
    info: dict = {}
    if variant == "reference":
        info["experts_implementation"] = original
        yield info
        return
    if variant == "reference-eager":
        _set_experts_implementation(model, "eager")
        info["experts_implementation"] = "eager"
        try:
            yield info
        finally:
            _set_experts_implementation(model, original)
        return
    import interns2_fast

    patch = getattr(interns2_fast, "patch", None)
    unpatch = getattr(interns2_fast, "unpatch", None)
    if patch is None or unpatch is None:
        try:
            from .patching import patch, unpatch  # before the top-level export lands
        except ImportError:
            patch = unpatch = None
    if patch is None or unpatch is None:
        raise NotImplementedError("interns2_fast.patch / unpatch are not available in this checkout")
    report = patch(model, backend="triton" if variant == "patched-triton" else "auto")
    summary = getattr(report, "summary", None)
    info["patch"] = summary() if callable(summary) else str(report)
    info["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    try:
        yield info
    finally:
        unpatch(model)


def cache_keyword(model) -> str:
    """The forward keyword that takes the KV / recurrent cache: `cache` in the newest transformers
    (`past_key_values` is deprecated there), else `past_key_values`."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The cache a forward returned (ModelOutput.past_key_values, or .cache)."""
    cache = getattr(out, "past_key_values", None)
    return cache if cache is not None else getattr(out, "cache", None)


def _peak_from_profiler_memory_events(prof) -> int | None:
    """Peak of the running sum of the profiler's allocation events (bytes), or None."""
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:
        return None
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


class RssPeak:
    """Context manager: peak resident memory above the RSS at entry (Linux: VmHWM after resetting
    it through /proc/self/clear_refs). Costs nothing measurable, so it can wrap a timed call; it
    counts allocator caching too. `peak` is None where /proc is missing."""

    method = "peak RSS delta (VmHWM after clear_refs)"

    def __init__(self):
        self.peak: int | None = None
        self._before: int | None = None

    @staticmethod
    def _status() -> dict[str, int]:
        text = pathlib.Path("/proc/self/status").read_text()
        return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}

    def __enter__(self):
        try:
            pathlib.Path("/proc/self/clear_refs").write_text("5")
            self._before = self._status()["VmRSS"]
        except (OSError, AttributeError):
            self._before = None
        return self

    def __exit__(self, *exc):
        if self._before is not None:
            try:
                self.peak = max(0, self._status()["VmHWM"] - self._before)
            except (OSError, AttributeError):
                self.peak = None
        return False


def peak_memory(fn: Callable[[], object], device) -> tuple[int | None, str]:
    """Run `fn` once and return (peak bytes allocated above what was live before, method).

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. NPU: the same through
    torch.npu. CPU: the peak of the running sum of torch.profiler's allocation events
    (`profile_memory=True`; every tensor allocation and free of the call), which counts tensors only;
    if that API is missing, the peak RSS above the RSS before the call (Linux VmHWM after resetting
    it through /proc/self/clear_refs), which also counts allocator caching.
    """
    import torch

    if device.type in ("cuda", "npu"):
        mod = torch.cuda if device.type == "cuda" else torch.npu  # type: ignore[attr-defined]
        synchronize(device)
        mod.reset_peak_memory_stats(device)
        base = mod.memory_allocated(device)
        fn()
        synchronize(device)
        return int(mod.max_memory_allocated(device) - base), f"torch.{device.type}.max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = _peak_from_profiler_memory_events(prof)
    if peak is not None:
        return peak, "torch.profiler allocation events (tensor bytes)"
    with RssPeak() as rss:
        fn()
    return (rss.peak, RssPeak.method) if rss.peak is not None else (None, "unavailable")


# --- results: rows, table, plot ------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    group: str
    op: str
    shape: str
    backend: str
    median_s: float
    ratio: float | None  # reference median / this median (> 1: faster than the reference)
    device: str = ""
    dtype: str = ""
    name: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


def load_benchmarks(paths: Iterable) -> list[dict]:
    """The `benchmarks` entries of one or more pytest-benchmark JSON files."""
    out = []
    for p in paths:
        p = pathlib.Path(p)
        if p.is_file():
            out.extend(json.loads(p.read_text()).get("benchmarks", []))
    return out


def merge_benchmark_json(parts, dest, *, keep_data: bool = False) -> None:
    """Concatenate pytest-benchmark JSON files (machine/commit info from the first one present).
    Without keep_data the per-round timings (`stats.data`) are dropped; the statistics stay."""
    merged: dict | None = None
    for p in parts:
        p = pathlib.Path(p)
        if not p.is_file():
            continue
        data = json.loads(p.read_text())
        if merged is None:
            merged = data
        else:
            merged.setdefault("benchmarks", []).extend(data.get("benchmarks", []))
    if merged is None:
        return
    if not keep_data:
        for b in merged.get("benchmarks", []):
            (b.get("stats") or {}).pop("data", None)
    pathlib.Path(dest).write_text(json.dumps(merged, indent=1))


def _backend_key(backend: str):
    return (BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER), backend)


def make_rows(benchmarks: list[dict]) -> list[Row]:
    """One row per benchmark, grouped as pytest-benchmark grouped them; `ratio` against the
    group's `reference` backend (extra_info["backend"] == "reference")."""
    groups: dict[str, list[Row]] = {}
    for b in benchmarks:
        info = dict(b.get("extra_info") or {})
        stats = b.get("stats") or {}
        if "median" not in stats:
            continue
        group = b.get("group") or f"{info.get('op', b.get('name'))} {info.get('shape', '')}".strip()
        row = Row(group=group, op=str(info.pop("op", group.split(" ")[0])), shape=str(info.pop("shape", "")),
                  backend=str(info.pop("backend", "?")), median_s=float(stats["median"]), ratio=None,
                  device=str(info.pop("device", "")), dtype=str(info.pop("dtype", "")).replace("torch.", ""),
                  name=b.get("name", ""),
                  extra=info)
        groups.setdefault(group, []).append(row)
    rows: list[Row] = []
    for group, members in groups.items():
        refs = [r for r in members if r.backend == "reference"]
        ref = min((r.median_s for r in refs), default=None)
        for r in members:
            r.ratio = (ref / r.median_s) if ref is not None and r.median_s > 0 else None
        rows.extend(sorted(members, key=lambda r: _backend_key(r.backend)))
    return rows


def format_seconds(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _format_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _notes(row: Row) -> str:
    parts = []
    if row.extra.get("tokens_per_s") is not None:
        parts.append(f"{row.extra['tokens_per_s']:.3g} tok/s")
    if row.extra.get("peak_mem_bytes") is not None:
        parts.append(f"peak {_format_bytes(row.extra['peak_mem_bytes'])}")
    return ", ".join(parts)


def markdown_table(rows: list[Row]) -> str:
    """case | shape | backend | median | vs reference | notes (one block per group)."""
    lines = ["| case | shape | backend | device / dtype | median | speedup vs reference | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "—" if r.ratio is None else ("1.00× (baseline)" if r.backend == "reference" else f"{r.ratio:.2f}×")
        dev = " / ".join(x for x in (r.device, r.dtype) if x)
        lines.append(f"| {r.op} | {r.shape} | {r.backend} | {dev} | {format_seconds(r.median_s)} | {ratio} | "
                     f"{_notes(r)} |")
    return "\n".join(lines)


_AXIS_KEYS = {"T": ("seq_len", "T", "tokens"), "B": ("batch", "B")}


def axis_values(row: Row) -> dict[str, int]:
    """Sequence length T and batch B of a row, from extra_info (seq_len / batch) or its shape string."""
    out: dict[str, int] = {}
    for axis, keys in _AXIS_KEYS.items():
        for k in keys:
            if isinstance(row.extra.get(k), (int, float)):
                out[axis] = int(row.extra[k])
                break
        else:
            m = re.search(rf"(?<![A-Za-z0-9_]){axis}\s*[=:]?\s*(\d+)", row.shape)
            if m:
                out[axis] = int(m.group(1))
    return out


def speedup_series(rows: list[Row]) -> dict[str, dict[tuple[str, str], list[tuple[int, float]]]]:
    """{"T": {(op, backend): [(T, speedup), ...]}, "B": {...}} for every non-reference row with a ratio.

    A series goes on the T axis when its op's cases differ in T, else on the B axis when they differ
    in B; an op with one case goes on T when T > 1, else on B.
    """
    by_op: dict[str, list[Row]] = {}
    for r in rows:
        by_op.setdefault(r.op, []).append(r)
    out: dict[str, dict] = {"T": {}, "B": {}}
    for op, members in by_op.items():
        values = [axis_values(r) for r in members]
        ts = {v.get("T") for v in values if "T" in v}
        bs = {v.get("B") for v in values if "B" in v}
        if len(ts) > 1:
            axis = "T"
        elif len(bs) > 1:
            axis = "B"
        elif ts and max(ts) > 1:
            axis = "T"
        elif bs:
            axis = "B"
        else:
            continue
        for r, v in zip(members, values):
            if r.backend == "reference" or r.ratio is None or axis not in v:
                continue
            out[axis].setdefault((op, r.backend), []).append((v[axis], r.ratio))
    for axis in out:
        for key in out[axis]:
            out[axis][key].sort()
    return out


def plot_speedup(rows: list[Row], path, title: str = "") -> bool:
    """PNG: speedup vs the reference against sequence length (left) and batch (right). False if
    there is nothing to plot or matplotlib is missing."""
    series = speedup_series(rows)
    if not any(series.values()):
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    axes_used = [a for a in ("T", "B") if series[a]]
    fig, axes = plt.subplots(1, len(axes_used), figsize=(7 * len(axes_used), 5), squeeze=False)
    for ax, axis in zip(axes[0], axes_used):
        for (op, backend), points in sorted(series[axis].items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=f"{op} · {backend}")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ys = [y for points in series[axis].values() for _, y in points if y > 0]
        if ys and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length / tokens T" if axis == "T" else "batch B")
        ax.set_ylabel("speedup vs reference (×)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- the runner ---------------------------------------------------------------------------------

def repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[1]


def benchmarks_dir() -> pathlib.Path:
    """The suite: beside the package in a source checkout (pip install -e .), else ./benchmarks."""
    beside = repo_root() / "benchmarks"
    return beside if beside.is_dir() else pathlib.Path.cwd() / "benchmarks"


def suite_paths(suite: str, bench_dir: pathlib.Path) -> list[pathlib.Path]:
    if suite == "ops":
        return [bench_dir / "ops"]
    if suite == "e2e":
        return [bench_dir / "e2e"]
    if suite == "all":
        return [bench_dir / "ops", bench_dir / "e2e"]
    return []


def pytest_command(paths, json_path, *, quick: bool, extra_args=()) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *map(str, paths), "--benchmark-only", "-p", "no:xdist",
           "-p", "no:cacheprovider", "--import-mode=importlib", f"--benchmark-json={json_path}",
           "--benchmark-sort=name", "--benchmark-columns=min,median,max,rounds", "-v", "-rs"]
    if quick:
        cmd += ["--benchmark-min-rounds=3", "--benchmark-max-time=0.5", "--benchmark-warmup=on",
                "--benchmark-warmup-iterations=1"]
    return cmd + list(extra_args)


def _run_streaming(cmd, env, log_path, prefix: str, cwd=None) -> int:
    """Run cmd, echo its lines (prefixed) as they come, keep a log."""
    print(f"[bench] $ {shlex.join(cmd)}", flush=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.strip():
                print(f"{prefix} {line.rstrip()}", flush=True)
        return proc.wait()


def environment() -> dict:
    import platform

    from . import device as _device

    info = _device.describe()
    info.update(python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def run(suite: str = "all", *, quick: bool = False, out=None, pytest_args=(), counts_args=None,
        bench_dir=None) -> int:
    """Run a suite; write JSON, results.md, speedup.png (and counts) under `out`; print the table."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    bench_dir = pathlib.Path(bench_dir).resolve() if bench_dir else benchmarks_dir()
    if not bench_dir.is_dir():
        print(f"[bench] no benchmark suite at {bench_dir}: `interns2-fast bench` runs from a source checkout "
              "(git clone, pip install -e .)", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(out) if out else repo_root() / ".benchmarks" / "interns2-fast" / stamp
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "bench.log"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the interpreter is a correctness tool, never benchmarked
    env.pop("PYTEST_ADDOPTS", None)
    if quick:
        env[QUICK_ENV] = "1"
    env_info = environment()
    env_info.update(suite=suite, quick=quick)
    (out / "env.json").write_text(json.dumps(env_info, indent=2, default=str))
    t0 = time.perf_counter()
    status = 0
    json_path = out / "benchmarks.json"
    paths = [p for p in suite_paths(suite, bench_dir) if p.exists()]
    missing = [p for p in suite_paths(suite, bench_dir) if not p.exists()]
    for p in missing:
        print(f"[bench] (no {p.relative_to(bench_dir.parent)} in this checkout)", flush=True)
    # One pytest process per suite folder: the e2e stack (13 GB in fp32) never shares a process with
    # the op benchmarks' cached full-size weights.
    part_jsons = []
    for p in paths:
        part = out / f"benchmarks-{p.name}.json" if len(paths) > 1 else json_path
        rc = _run_streaming(pytest_command([p], part, quick=quick, extra_args=pytest_args), env, log_path,
                            f"[{p.name}]", cwd=bench_dir.parent)
        part_jsons.append(part)
        if rc not in (0, 5):
            print(f"[bench] pytest exited {rc} on {p.name}; tabulating what was measured", flush=True)
            status = status or rc
    if len(part_jsons) > 1:
        merge_benchmark_json(part_jsons, json_path)
    if suite in ("counts", "all"):
        cargs = list(counts_args) if counts_args is not None else []
        cmd = [sys.executable, str(bench_dir / "counts.py"), "--json", str(out / "counts.json"),
               "--md", str(out / "counts.md"), *cargs]
        rc = _run_streaming(cmd, env, log_path, "[counts]", cwd=bench_dir.parent)
        if rc != 0:
            status = status or rc
    rows = make_rows(load_benchmarks([json_path]))
    sections = []
    title = (f"interns2_fast benchmarks — {env_info.get('cuda_device') or env_info['machine']} "
             f"({env_info['cpus']} CPUs), {env_info['date'][:10]}, suite {suite}{' --quick' if quick else ''}")
    if rows:
        table = markdown_table(rows)
        sections.append(table)
        if plot_speedup(rows, out / "speedup.png", title=title):
            print(f"[bench] plot: {out / 'speedup.png'}")
    if (out / "counts.md").exists():
        sections.append((out / "counts.md").read_text().strip())
    header = (f"# {title}\n\ntorch {env_info.get('torch')}, transformers {env_info.get('transformers')}, "
              f"triton {env_info.get('triton', '-')} ({env_info.get('triton_flavour')}); "
              f"{time.perf_counter() - t0:.0f} s. Speedup = reference median / median (> 1 is faster).\n")
    text = header + "\n" + "\n\n".join(sections) + "\n"
    (out / "results.md").write_text(text)
    print()
    print(text)
    print(f"[bench] wrote {out}/ (benchmarks.json, results.md, speedup.png, counts.*, env.json, bench.log)")
    return status


def add_arguments(p) -> None:
    p.add_argument("--suite", choices=SUITES, default="all")
    p.add_argument("--quick", action="store_true",
                   help="small case lists and few rounds (a few minutes on 2 CPU cores)")
    p.add_argument("--out", help="output folder (default .benchmarks/interns2-fast/<timestamp>/ in the checkout, git-ignored)")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k gdn\"")
    p.add_argument("--bench-dir", default=None, help="the benchmarks/ folder (default: the checkout's)")
    p.add_argument("--counts-args", default=None,
                   help="arguments for benchmarks/counts.py (default: its own; quick: the scaled-down model)")


def main(args) -> int:
    counts_args = shlex.split(args.counts_args) if args.counts_args is not None else None
    if counts_args is None and args.quick:
        counts_args = ["--model", "default"]
    return run(args.suite, quick=args.quick, out=args.out, pytest_args=shlex.split(args.pytest_args),
               counts_args=counts_args, bench_dir=getattr(args, "bench_dir", None))
