"""Launch and sync counts per decode token and per layer: the reference vs the patched path.

On an NPU in eager mode every ATen op is a kernel launch of tens of microseconds and every host
synchronisation drains the pipeline, so these counts are the closest proxy for NPU decode speed
that can be measured without one. What is counted, for `steps` decode steps after a prefill and
one unmeasured warm-up step:

* **ATen compute ops** — `torch.profiler` CPU events named `aten::*`, counted as dispatched to a
  backend: an op counts when it is not CompositeImplicitAutograd (those decompose: `aten::linear`
  -> `aten::mm` is one op, `aten::dropout` in eval is none), not in `NO_DEVICE_WORK_OPS` (views,
  metadata, bare allocations) nor a scalar read (`SYNC_ONLY_OPS`), and no ATen ancestor counts
  (what a CPU kernel calls internally — `aten::mean`'s sum and div — is not counted again). It is
  reported under its outermost non-view ATen ancestor's name. ATen ops that run inside a Triton
  launch (the interpreter's host copies on the CPU) are not counted: the launch is.
* **Triton launches** — every `kernel[grid](...)` that reaches `JITFunction.run` (compiled Triton)
  or the interpreter's `GridExecutor` (TRITON_INTERPRET=1), counted by wrapping both while counting.
* **Host syncs** — `SYNC_OPS` events (`aten::item` behind `.item()`, `aten::is_nonzero` behind
  `bool(t)` / `if t:`, `aten::nonzero` behind boolean indexing and `torch.where(cond)`, unique,
  masked_select, ...) with no sync ancestor; inside a counted compute op only `aten::nonzero` counts
  (scalar reads a CPU kernel makes internally, e.g. the CPU fallback of `aten::_grouped_mm` reading
  its group offsets, are that kernel's implementation, not the model's).
* **Device kernels** (CUDA only) — kernel events of the profiler's CUDA activity.

Per layer = the events inside decoder layer i (forward hooks open a `layer::i::<type>` range)
divided by the number of layers; `outside` = embedding, rotary tables, masks, final norm, lm_head.

Variants: `reference` (the installed transformers, its default experts implementation: grouped_mm
on torch >= 2.9), `reference-eager` (experts_implementation="eager": the Python loop over hit
experts), `patched` (`interns2_fast.patch(model, backend="auto")`), `patched-triton`
(`backend="triton"`; on the CPU through the Triton interpreter, which this module then enables).

    .venv/bin/python benchmarks/counts.py                      # 4-layer full-width stack, bf16, CPU
    .venv/bin/python benchmarks/counts.py --model default --dtype float32 --json counts.json
    .venv/bin/python benchmarks/counts.py --path static --variants reference patched patched-triton  # the static step
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

#: ATen ops that launch no device work: views and metadata, bare allocations (the op that fills the
#: buffer is the counted one) and host-side scalar wrapping.
NO_DEVICE_WORK_OPS = frozenset({
    # views / metadata
    "aten::view", "aten::_unsafe_view", "aten::view_as", "aten::reshape", "aten::_reshape_alias",
    "aten::as_strided", "aten::as_strided_", "aten::expand", "aten::expand_as", "aten::unsqueeze",
    "aten::unsqueeze_", "aten::squeeze", "aten::squeeze_", "aten::transpose", "aten::transpose_",
    "aten::t", "aten::t_", "aten::permute", "aten::movedim", "aten::select", "aten::slice",
    "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::tensor_split", "aten::chunk",
    "aten::unbind", "aten::unflatten", "aten::flatten", "aten::alias", "aten::detach", "aten::detach_",
    "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::_conj", "aten::conj",
    "aten::real", "aten::view_as_real", "aten::view_as_complex", "aten::diagonal",
    "aten::result_type", "aten::size", "aten::stride", "aten::numel", "aten::dim", "aten::is_same_size",
    "aten::_has_compatible_shallow_copy_type", "aten::set_", "aten::_nested_tensor_size",
    # allocation without a kernel
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
    "aten::new_empty_strided", "aten::resize_", "aten::resize_as_",
    # a Python scalar wrapped into a CPU tensor on the host
    "aten::scalar_tensor",
})

# What a host sync is: one definition, shared with interns2_fast.numerics.
from interns2_fast.host_sync import HOST_SYNC_EVENTS as SYNC_OPS  # noqa: E402
from interns2_fast.host_sync import SYNC_ONLY_OPS  # noqa: E402,F401

VARIANTS = ("reference", "reference-eager", "patched", "patched-triton")  # = interns2_fast.bench.MODEL_VARIANTS


# --- Triton launch counting --------------------------------------------------------------------

@contextlib.contextmanager
def count_triton_launches(record_ranges: bool = True):
    """Count Triton kernel launches (per kernel name) while inside the block.

    Wraps `triton.runtime.jit.JITFunction.run` (compiled launches; autotuners and heuristics call
    it once per launch) and the interpreter's `GridExecutor.__call__` (TRITON_INTERPRET=1). Each
    launch is also wrapped in a `triton::<name>` profiler range, so the ATen ops it runs on the host
    can be told apart. Yields a Counter; works (and counts nothing) when Triton is absent.
    """
    launches: collections.Counter = collections.Counter()
    patched: list[tuple[type, str, object]] = []

    def wrap(cls, attr, name_of):
        original = cls.__dict__[attr]

        def counted(self, *args, **kwargs):
            if kwargs.get("warmup"):
                return original(self, *args, **kwargs)
            name = name_of(self)
            launches[name] += 1
            if not record_ranges:
                return original(self, *args, **kwargs)
            import torch

            with torch.profiler.record_function(f"triton::{name}"):
                return original(self, *args, **kwargs)

        setattr(cls, attr, counted)
        patched.append((cls, attr, original))

    def fn_name(obj) -> str:
        fn = getattr(obj, "fn", None)
        return getattr(fn, "__name__", None) or getattr(obj, "__name__", "kernel")

    try:
        try:
            from triton.runtime.jit import JITFunction

            wrap(JITFunction, "run", fn_name)
        except (ImportError, KeyError):
            pass
        try:
            from triton.runtime.interpreter import GridExecutor

            wrap(GridExecutor, "__call__", fn_name)
        except (ImportError, KeyError):
            pass
        yield launches
    finally:
        for cls, attr, original in reversed(patched):
            setattr(cls, attr, original)


# --- per-layer ranges ------------------------------------------------------------------------------

def decoder_layers(model) -> list:
    """The decoder layers of a causal LM (model.model.layers), or []."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def layer_type(model, index: int) -> str:
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if types and index < len(types):
        return str(types[index])
    return "layer"


@contextlib.contextmanager
def layer_ranges(model):
    """Open a `layer::<i>::<type>` profiler range around each decoder layer's forward."""
    import torch

    handles, open_ranges = [], {}
    for i, layer in enumerate(decoder_layers(model)):
        name = f"layer::{i}::{layer_type(model, i)}"

        def pre(module, args, _name=name, _i=i):
            rf = torch.profiler.record_function(_name)
            rf.__enter__()
            open_ranges[_i] = rf

        def post(module, args, output, _i=i):
            rf = open_ranges.pop(_i, None)
            if rf is not None:
                rf.__exit__(None, None, None)

        handles.append(layer.register_forward_pre_hook(pre))
        handles.append(layer.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- classification -----------------------------------------------------------------------------

@dataclass
class Classified:
    compute_ops: collections.Counter = field(default_factory=collections.Counter)  # (scope, name)
    syncs: collections.Counter = field(default_factory=collections.Counter)
    launches: collections.Counter = field(default_factory=collections.Counter)  # (scope, kernel)


def _scope_of(event) -> tuple[str | None, bool]:
    """(layer range name or None, inside a Triton launch?) of a profiler event."""
    scope, in_triton = None, False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("triton::"):
            in_triton = True
        elif parent.name.startswith("layer::") and scope is None:
            scope = parent.name
        parent = parent.cpu_parent
    return scope, in_triton


_COMPOSITE_CACHE: dict[str, bool] = {}


def is_composite_implicit(name: str) -> bool:
    """True when every overload of the ATen op `name` is CompositeImplicitAutograd: it decomposes
    into other ATen ops on every backend (aten::linear -> aten::mm) and launches nothing itself."""
    if name not in _COMPOSITE_CACHE:
        import torch

        short = name.split("::", 1)[1]
        packet = getattr(torch.ops.aten, short, None)
        result = False
        if packet is not None:
            try:
                has = torch._C._dispatch_has_kernel_for_dispatch_key
                flags = []
                for ov in packet.overloads():
                    if ov == "out" or ov.endswith("_out"):  # out= variants are not what models call
                        continue
                    full = name if ov == "default" else f"{name}.{ov}"
                    try:
                        if torch._C._dispatch_has_kernel(full):
                            flags.append(has(full, "CompositeImplicitAutograd"))
                    except RuntimeError:  # TorchScript-only overloads (aten::to.prim_Device)
                        continue
                result = bool(flags) and all(flags)
            except Exception:
                result = False
        _COMPOSITE_CACHE[name] = result
    return _COMPOSITE_CACHE[name]


def is_backend_op(name: str) -> bool:
    """An ATen op that a backend implements as (typically) one kernel."""
    return (name.startswith("aten::") and name not in NO_DEVICE_WORK_OPS and name not in SYNC_ONLY_OPS
            and not is_composite_implicit(name))


def _label(event) -> str:
    """Name a counted op after its outermost non-view ATen ancestor (aten::mm under aten::linear is
    reported as aten::linear, the copy under aten::to as aten::to)."""
    name, parent = event.name, event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::") and parent.name not in NO_DEVICE_WORK_OPS:
            name = parent.name
        parent = parent.cpu_parent
    return name


def classify_events(events) -> Classified:
    """Count ATen compute ops and host syncs, keyed by (scope, op name).

    A compute op is an event of a backend op (`is_backend_op`) with no backend-op ancestor: the ops
    as dispatched to a backend after CompositeImplicitAutograd decompositions — what the NPU would
    run as kernels. What a CPU kernel calls internally (aten::mean's sum and div, the wrapped-scalar
    copy inside aten::add) is that kernel's business and is not counted again.

    A sync is a `SYNC_OPS` event with no sync ancestor that is not inside a counted compute op, or an
    `aten::nonzero` anywhere (a data-dependent output size always needs the host): scalar reads that
    a backend's CPU kernel makes internally (the CPU fallback of aten::_grouped_mm reads its offsets)
    belong to that kernel.
    """
    out = Classified()
    for e in events:
        if e.name.startswith("triton::"):
            scope, in_triton = _scope_of(e)
            if not in_triton:
                out.launches[(scope or "outside", e.name.split("::", 1)[1])] += 1
            continue
        if not e.name.startswith("aten::"):
            continue
        scope, in_triton = _scope_of(e)
        if in_triton:
            continue
        scope = scope or "outside"
        inside_op = inside_sync = False
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                inside_op = inside_op or is_backend_op(parent.name)
                inside_sync = inside_sync or parent.name in SYNC_OPS
            parent = parent.cpu_parent
        if is_backend_op(e.name) and not inside_op:
            out.compute_ops[(scope, _label(e))] += 1
        if e.name in SYNC_OPS and not inside_sync and (not inside_op or e.name == "aten::nonzero"):
            out.syncs[(scope, e.name)] += 1
    return out


# --- measuring one variant --------------------------------------------------------------------

@dataclass
class Counts:
    variant: str
    num_layers: int
    steps: int
    batch: int
    #: per decode token (= per step), summed over all layers
    ops_in_layers: float = 0.0
    ops_outside: float = 0.0
    launches: float = 0.0
    syncs_in_layers: float = 0.0
    syncs_outside: float = 0.0
    device_kernels: float | None = None
    #: per decode token and per layer
    ops_per_layer: float = 0.0
    launches_per_layer: float = 0.0
    syncs_per_layer: float = 0.0
    device_ops_per_layer: float = 0.0
    by_layer_type: dict = field(default_factory=dict)
    top_ops: dict = field(default_factory=dict)
    sync_ops: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)
    experts_implementation: str | None = None
    seconds_per_token: float = 0.0
    patch: str | None = None
    error: str | None = None


def _next_token(logits):
    return logits[:, -1:].argmax(-1)


def static_decode_step(model, prompt, out, steps: int):
    """The static decode step `model.generate()` runs after `patch()` (`interns2_fast.decode`), set up on
    the prefill `out` of `prompt` the way generate() sets it up (eager runner: what the CPU runs and what
    a device graph captures); returns (step, first token)."""
    import torch

    from interns2_fast.bench import output_cache
    from interns2_fast.decode.generate import build_step
    from interns2_fast.decode.static_cache import read_cache_states
    from interns2_fast.decode.step import find_parts
    from interns2_fast.patching.caches import cache_protocol

    parts = find_parts(model)
    if isinstance(parts, str):
        raise RuntimeError(f"static decode step: {parts}")
    cache = output_cache(out)
    states = read_cache_states(cache, parts.kinds)
    B, T = prompt.shape
    step = build_step(parts, states, B, T + steps + 2, cache_protocol(cache))
    step.load(states, T, None, torch.full((B, 1), T, dtype=torch.long, device=parts.embed.weight.device))
    return step, _next_token(out.logits)


def measure_decode(model, *, variant: str = "reference", batch: int = 1, prompt_len: int = 8,
                   steps: int = 2, seed: int = 0, path: str = "model") -> Counts:
    """Count ops, launches and syncs of `steps` decode steps of `model` (as it is: patch it first).
    path "model": `model(token, past_key_values=cache)` per step (transformers' own loop);
    "static": the static decode step generate() runs after patch() (`static_decode_step`)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
    layers = decoder_layers(model)
    num_layers = max(1, len(layers))
    types = [layer_type(model, i) for i in range(len(layers))]

    from interns2_fast.bench import cache_keyword, output_cache

    kw = cache_keyword(model)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        if path == "static":
            step, tok = static_decode_step(model, prompt, out, steps + 1)
            del out

            def decode(tok):
                step.input_ids.copy_(tok.view(-1, 1))
                return _next_token(step()[:, None, :])
        else:
            cache, tok = output_cache(out), _next_token(out.logits)

            def decode(tok):
                return _next_token(model(input_ids=tok, use_cache=True, **{kw: cache}).logits)
        tok = decode(tok)  # warm-up step
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with count_triton_launches() as launches, layer_ranges(model), profile(activities=activities) as prof:
            for _ in range(steps):
                tok = decode(tok)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0

    events = prof.events()
    cls = classify_events(events)
    result = Counts(variant=variant, num_layers=num_layers, steps=steps, batch=batch,
                    experts_implementation=getattr(model.config, "_experts_implementation", None),
                    seconds_per_token=seconds / steps)
    in_layers = sum(n for (scope, _), n in cls.compute_ops.items() if scope != "outside")
    result.ops_in_layers = in_layers / steps
    result.ops_outside = sum(n for (scope, _), n in cls.compute_ops.items() if scope == "outside") / steps
    result.syncs_in_layers = sum(n for (scope, _), n in cls.syncs.items() if scope != "outside") / steps
    result.syncs_outside = sum(n for (scope, _), n in cls.syncs.items() if scope == "outside") / steps
    result.launches = sum(launches.values()) / steps
    result.ops_per_layer = result.ops_in_layers / num_layers
    result.syncs_per_layer = result.syncs_in_layers / num_layers
    result.launches_per_layer = sum(n for (scope, _), n in cls.launches.items() if scope != "outside") / steps / num_layers
    result.device_ops_per_layer = result.ops_per_layer + result.launches_per_layer

    per_type: dict[str, dict] = {}
    for t in sorted(set(types)):
        n_layers = types.count(t)
        ops = sum(n for (scope, _), n in cls.compute_ops.items() if scope.endswith(f"::{t}"))
        syncs = sum(n for (scope, _), n in cls.syncs.items() if scope.endswith(f"::{t}"))
        kernels = sum(n for (scope, _), n in cls.launches.items() if scope.endswith(f"::{t}"))
        per_type[t] = {"layers": n_layers, "ops_per_layer": ops / steps / n_layers,
                       "launches_per_layer": kernels / steps / n_layers,
                       "device_ops_per_layer": (ops + kernels) / steps / n_layers,
                       "syncs_per_layer": syncs / steps / n_layers}
    result.by_layer_type = per_type
    names = collections.Counter()
    for (_, name), n in cls.compute_ops.items():
        names[name] += n
    result.top_ops = {k: v / steps for k, v in names.most_common(25)}
    sync_names = collections.Counter()
    for (_, name), n in cls.syncs.items():
        sync_names[name] += n
    result.sync_ops = {k: v / steps for k, v in sync_names.most_common()}
    result.kernels = {k: v / steps for k, v in launches.most_common()}
    if device.type == "cuda":
        from torch.autograd import DeviceType

        result.device_kernels = sum(1 for e in events if e.device_type == DeviceType.CUDA) / steps
    return result


# --- variants ---------------------------------------------------------------------------------

def variant_applied(model, variant: str):
    """Put `model` in the state a variant measures (see interns2_fast.bench.model_variant)."""
    from interns2_fast.bench import model_variant

    return model_variant(model, variant)


def build_model(kind: str, *, num_layers: int, dtype, device):
    from interns2_fast import models

    if kind == "full":
        return models.build_full_width_stack(num_layers, dtype=dtype, device=device)
    if kind == "default":
        return models.build_causal_lm("qwen3_5_moe", models.default_config(num_layers), dtype=dtype, device=device)
    raise ValueError(f"unknown model {kind!r}; expected 'full' or 'default'")


def run_counts(model, variants=VARIANTS, *, batch: int = 1, prompt_len: int = 8, steps: int = 2,
               progress=None, path: str = "model") -> list[Counts]:
    """Measure each variant on `model`; a variant that cannot run gets `error` set."""
    results = []
    for variant in variants:
        if progress:
            progress(f"counting {variant} ...")
        try:
            with variant_applied(model, variant) as info:
                counts = measure_decode(model, variant=variant, batch=batch, prompt_len=prompt_len, steps=steps,
                                        path=path)
                counts.patch = info.get("patch")
                if variant.startswith("patched"):  # the patch hooks the experts module, not the config
                    counts.experts_implementation = "interns2_fast " + ("triton" if variant == "patched-triton" else "auto")
                results.append(counts)
        except Exception as exc:  # report, keep going with the other variants
            results.append(Counts(variant=variant, num_layers=len(decoder_layers(model)), steps=steps,
                                  batch=batch, error=f"{type(exc).__name__}: {exc}"))
    return results


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "—"
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.{digits}f}"


def markdown_table(results: list[Counts]) -> str:
    """One row per variant, per decode token: per layer (mean over the stack and per layer type)."""
    types = sorted({t for r in results for t in r.by_layer_type})
    head = ["variant", "experts impl", "ATen ops / layer", "Triton launches / layer", "device ops / layer",
            *[f"device ops / {t} layer" for t in types], "host syncs / layer", "outside layers: ops, syncs",
            "s / token (profiled)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.variant} | not measured: {r.error} |" + " |" * (len(head) - 2))
            continue
        row = [r.variant, str(r.experts_implementation), _fmt(r.ops_per_layer), _fmt(r.launches_per_layer),
               _fmt(r.device_ops_per_layer),
               *[_fmt(r.by_layer_type.get(t, {}).get("device_ops_per_layer")) for t in types],
               _fmt(r.syncs_per_layer), f"{_fmt(r.ops_outside)}, {_fmt(r.syncs_outside)}",
               f"{r.seconds_per_token:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("full", "default"), default="full",
                        help="full: full-width Intern-S2 stack (BRIEF §2 widths); default: the scaled-down model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 (what the NPU runs) or float32")
    parser.add_argument("--device", default=os.environ.get("INTERNS2_BENCH_DEVICE", "cpu"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="decode steps profiled (after one warm-up step)")
    parser.add_argument("--path", choices=("model", "static"), default="model",
                        help="model: model(token, past_key_values=cache) per step (transformers' loop); static: "
                             "the static decode step that generate() runs after patch() (interns2_fast.decode)")
    parser.add_argument("--json", help="write the counts as JSON here")
    parser.add_argument("--md", help="write the Markdown table here")
    args = parser.parse_args(argv)

    # The Triton interpreter must be chosen before any kernel module is imported.
    if "patched-triton" in args.variants and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
             "fp32": torch.float32, "float16": torch.float16}[args.dtype]
    device = torch.device(args.device)

    def say(msg):
        print(f"[counts] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    say(f"building the {args.model} {args.layers}-layer model ({args.dtype}, {device}) ...")
    model = build_model(args.model, num_layers=args.layers, dtype=dtype, device=device)
    say(f"built in {time.perf_counter() - t0:.0f} s")
    results = run_counts(model, args.variants, batch=args.batch, prompt_len=args.prompt_len, steps=args.steps,
                         progress=say, path=args.path)
    import transformers

    meta = {"model": args.model, "layers": args.layers, "dtype": args.dtype, "device": str(device),
            "batch": args.batch, "prompt_len": args.prompt_len, "steps": args.steps, "path": args.path,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}
    table = markdown_table(results)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": [asdict(r) for r in results]}, f, indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"Decode counts per token ({args.model} {args.layers}-layer stack, {args.dtype}, {device}, "
                    f"{'static decode step' if args.path == 'static' else 'model forward per step'}, "
                    f"batch {args.batch}, transformers {transformers.__version__}, torch {torch.__version__})\n\n")
            f.write(table + "\n")
            f.write("\nPer decode token; per layer = inside the decoder layers / number of layers. device ops = ATen "
                    "compute ops + Triton launches (definitions: benchmarks/counts.py). s / token is the profiled "
                    "wall time on this machine, not a speed measurement")
            if meta["triton_interpret"] not in ("", "0"):
                f.write("; patched-triton ran under the Triton interpreter (TRITON_INTERPRET=1): its launches are "
                        "real counts, its time is the interpreter's")
            f.write(".\n")
    return 0 if not any(r.error for r in results if r.variant.startswith("reference")) else 1


if __name__ == "__main__":
    sys.exit(main())
