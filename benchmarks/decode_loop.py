"""The decode loop of `model.generate()`: transformers' loop vs interns2_fast's static step.

Per generated token of greedy `generate()` (batch B, fp32 on the CPU by default):

* **time** — decode seconds per token = (t(N new tokens) - t(1 new token)) / (N - 1), best of R
  alternated repetitions (the prefill and set-up cancel out), and tokens/s = B / that;
* **host work** — from torch.profiler over the same difference of two runs: ATen compute ops the
  host dispatches per token (classified as in `counts.py`: backend ops, outermost only), host
  syncs per token, Triton launches, device-graph replays; and, for the static step, the ops per
  layer by layer type (`layer::<i>::<type>` ranges), which is what the full-attention choice below
  is judged by.

Variants: `reference` (unpatched: transformers' fallbacks and loop), `patched`
(`patch(model, static_decode=False)`: the kernels, transformers' loop), `static`
(`patch(model)`: the kernels and the static step; eager on the CPU, graph replay on CUDA),
`static-eager` (`static_decode="eager"`, for the GPU comparison).

    .venv/bin/python benchmarks/decode_loop.py --model default --batch 1 3 --json out.json
    .venv/bin/python benchmarks/decode_loop.py --model full-width --new-tokens 9 --batch 1
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import counts as _counts  # noqa: E402  (benchmarks/counts.py: the op classification)

VARIANTS = ("reference", "patched", "static", "static-eager")


def build(kind: str, layers: int, dtype, device):
    from interns2_fast import models

    if kind == "default":
        return models.build_causal_lm("qwen3_5_moe", models.default_config(layers), dtype=dtype, device=device)
    return models.build_full_width_stack(layers, dtype=dtype, device=device)


@contextlib.contextmanager
def variant(model, name: str):
    from interns2_fast import patch, unpatch

    if name == "reference":
        yield
        return
    patch(model, static_decode={"patched": False, "static": True, "static-eager": "eager"}[name])
    try:
        yield
    finally:
        unpatch(model)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gen(model, ids, n):
    return model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False)


def time_per_token(model, ids, n: int, reps: int) -> float:
    device = ids.device
    best = {1: float("inf"), n: float("inf")}
    for _ in range(reps):
        for k in (1, n):
            _sync(device)
            t0 = time.perf_counter()
            _gen(model, ids, k)
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return (best[n] - best[1]) / (n - 1)


def _profile_counts(model, ids, n: int):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with _counts.count_triton_launches() as launches, _counts.layer_ranges(model), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        _gen(model, ids, n)
    events = prof.events()
    cls = _counts.classify_events(events)
    replays = sum(1 for e in events if e.name.endswith(("CUDAGraph::replay", "NPUGraph::replay"))
                  or "graph_replay" in e.name.lower())
    return cls, sum(launches.values()), replays, torch.profiler


def host_counts(model, ids, n: int) -> dict:
    """Per decode token: the difference of a profiled n-token and a 1-token generate(), over n - 1."""
    types = [_counts.layer_type(model, i) for i in range(len(_counts.decoder_layers(model)))]
    a, la, ra, _ = _profile_counts(model, ids, 1)
    b, lb, rb, _ = _profile_counts(model, ids, n)
    steps = n - 1

    def total(c, scope_filter=lambda s: True):
        return sum(v for (scope, _), v in c.items() if scope_filter(scope))

    out = {
        "aten_ops_per_token": (total(b.compute_ops) - total(a.compute_ops)) / steps,
        "host_syncs_per_token": (total(b.syncs) - total(a.syncs)) / steps,
        "triton_launches_per_token": (lb - la) / steps,
        "graph_replays_per_token": (rb - ra) / steps,
        "ops_per_layer": {},
    }
    for t in sorted(set(types)):
        n_layers = types.count(t)
        pick = lambda s, t=t: s.endswith(f"::{t}")  # noqa: E731
        out["ops_per_layer"][t] = (total(b.compute_ops, pick) - total(a.compute_ops, pick)) / steps / n_layers
    out["ops_outside_layers_per_token"] = (total(b.compute_ops, lambda s: s == "outside")
                                           - total(a.compute_ops, lambda s: s == "outside")) / steps
    syncs = collections.Counter()
    for (_, name), v in b.syncs.items():
        syncs[name] += v
    for (_, name), v in a.syncs.items():
        syncs[name] -= v
    out["sync_ops_per_token"] = {k: v / steps for k, v in syncs.items() if v}
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("default", "full-width"), default="default")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=33)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--no-counts", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    variants = args.variants or (["reference", "patched", "static", "static-eager"] if device.type == "cuda"
                                 else ["reference", "patched", "static"])
    model = build(args.model, args.layers, dtype, device)
    results = []
    for B in args.batch:
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(1, model.config.vocab_size, (B, args.prompt), generator=g).to(device)
        outs = {}
        for v in variants:
            with variant(model, v):
                with torch.no_grad():
                    _gen(model, ids, 3)  # warm-up (and the static buffers / graph capture)
                    outs[v] = _gen(model, ids, args.new_tokens)
                    spt = time_per_token(model, ids, args.new_tokens, args.reps)
                    row = {"model": args.model, "layers": args.layers, "batch": B, "variant": v,
                           "device": str(device), "dtype": args.dtype, "prompt": args.prompt,
                           "new_tokens": args.new_tokens, "decode_s_per_token": spt, "tokens_per_s": B / spt}
                    if not args.no_counts:
                        row.update(host_counts(model, ids, min(args.new_tokens, 5)))
                    from interns2_fast.decode import settings_of

                    st = settings_of(model)
                    if st is not None and st.last_runtime() is not None:
                        row["runner"] = st.last_runtime().runner.kind
            results.append(row)
            print(json.dumps(row), flush=True)
        same = all(torch.equal(outs[variants[0]], o) for o in outs.values())
        print(f"# B={B}: greedy ids identical across variants: {same}", flush=True)
        for r in results:
            if r["batch"] == B:
                r["ids_identical_across_variants"] = same
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


def markdown(results) -> str:
    lines = ["| model | B | variant | runner | decode ms/token | tokens/s | vs reference | ATen ops/token | "
             "syncs/token | ops per layer (type: n) |", "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    ref = {(r["model"], r["batch"]): r["decode_s_per_token"] for r in results if r["variant"] == "reference"}
    for r in results:
        base = ref.get((r["model"], r["batch"]))
        per_layer = ", ".join(f"{k}: {v:.1f}" for k, v in r.get("ops_per_layer", {}).items())
        lines.append(f"| {r['model']} ({r['layers']} layers) | {r['batch']} | {r['variant']} | {r.get('runner', '-')} | "
                     f"{1e3 * r['decode_s_per_token']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{(base / r['decode_s_per_token']) if base else float('nan'):.2f}x | "
                     f"{r.get('aten_ops_per_token', float('nan')):.1f} | {r.get('host_syncs_per_token', float('nan')):.1f} | "
                     f"{per_layer} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
