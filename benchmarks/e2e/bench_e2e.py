"""End to end: a full-width Intern-S2 stack, the transformers reference vs `interns2_fast.patch`.

The model is `interns2_fast.models.build_full_width_stack` — N full-width Intern-S2 layers (BRIEF §2:
hidden 2048, 16/32 linear-attention heads of 128, 256 experts top-8 with a shared expert; default
N = 4: three linear-attention layers and one full-attention layer) with random weights and a
1024-token vocabulary. Every case is measured for each model variant (interns2_fast.bench.model_variant):

  reference        transformers as installed (its default experts implementation)
  reference-eager  experts_implementation="eager" (the per-expert Python loop; full runs only)
  patched          interns2_fast.patch(model, backend="auto")

* prefill: one forward over [1, T] tokens with a fresh cache (what `generate` does first);
  T in {512, 2048} on the CPU, {512, 2048, 8192} on accelerators; quick: {512}.
* decode: `STEPS` greedy steps at batch B from the cache of a `PROMPT`-token prefill (prefilled once,
  each round decodes from a deep copy, untimed); B in {1, 8}; quick: {1}.
  extra_info["tokens_per_s"] = B * STEPS / median.
* rounds: 3 on the CPU, 10 on accelerators, 1 in quick runs; each case first makes one untimed call
  that warms up and measures memory (quick CPU runs skip it: see `_timed`).
* peak memory: extra_info["peak_mem_bytes"] = the peak of memory allocated during the call above
  what was live before it (the weights excluded); extra_info["peak_mem_method"] says how:
  torch.cuda.max_memory_allocated on CUDA, torch.profiler's allocation events (tensor bytes) on the
  CPU, the peak-RSS delta around the timed round in quick CPU prefill runs.

Environment: INTERNS2_BENCH_LAYERS (default 4), INTERNS2_BENCH_PREFILL_T ("512,2048"),
INTERNS2_BENCH_DECODE_B ("1,8"), INTERNS2_BENCH_DECODE_STEPS, INTERNS2_BENCH_ROUNDS (timed rounds per
case), INTERNS2_BENCH_E2E_MODEL ("full", the default, or "default": the scaled-down built-in model,
for dry runs of the suite's plumbing such as `scripts/gpu_bench.sh --dry-run`), plus the suite-wide
ones in conftest.py.
Memory: the 4-layer stack holds ~3.3 G parameters (13 GB in fp32, 6.5 GB in bf16).
"""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

from interns2_fast import bench as _bench

QUICK = _bench.is_quick()
DEVICE = _bench.select_device()
DTYPE = _bench.select_dtype(DEVICE)
NUM_LAYERS = int(os.environ.get("INTERNS2_BENCH_LAYERS", "4"))
E2E_MODEL = os.environ.get("INTERNS2_BENCH_E2E_MODEL", "full")
if E2E_MODEL not in ("full", "default"):
    raise ValueError(f"INTERNS2_BENCH_E2E_MODEL={E2E_MODEL!r}; expected 'full' or 'default'")
VOCAB = 1024 if E2E_MODEL == "full" else 256  # the default model's vocabulary holds at least the bytes


def _ints(env: str, default: list[int]) -> list[int]:
    value = os.environ.get(env)
    return [int(x) for x in value.split(",") if x.strip()] if value else default


if QUICK:
    PREFILL_T = _ints("INTERNS2_BENCH_PREFILL_T", [512])
    DECODE_B = _ints("INTERNS2_BENCH_DECODE_B", [1])
    DECODE_STEPS = int(os.environ.get("INTERNS2_BENCH_DECODE_STEPS", "4"))
    PROMPT = 16
    ROUNDS = 1
else:
    PREFILL_T = _ints("INTERNS2_BENCH_PREFILL_T", [512, 2048] if DEVICE.type == "cpu" else [512, 2048, 8192])
    DECODE_B = _ints("INTERNS2_BENCH_DECODE_B", [1, 8])
    DECODE_STEPS = int(os.environ.get("INTERNS2_BENCH_DECODE_STEPS", "8" if DEVICE.type == "cpu" else "32"))
    PROMPT = 128
    ROUNDS = 3 if DEVICE.type == "cpu" else 10

ROUNDS = int(os.environ.get("INTERNS2_BENCH_ROUNDS", ROUNDS))
PREFILL_VARIANTS = ["reference", "patched"] if QUICK else ["reference", "reference-eager", "patched"]
DECODE_VARIANTS = ["reference", "reference-eager", "patched"]
SHAPE = f"{'full-width' if E2E_MODEL == 'full' else 'default-model'} {NUM_LAYERS} layers"


@pytest.fixture(scope="module")
def stack():
    model = _bench_model()
    yield model
    del model


def _bench_model():
    from interns2_fast import models

    if E2E_MODEL == "default":
        return models.build_causal_lm("qwen3_5_moe", models.default_config(NUM_LAYERS), dtype=DTYPE, device=DEVICE)
    return models.build_full_width_stack(NUM_LAYERS, vocab_size=VOCAB, dtype=DTYPE, device=DEVICE)


def _tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=gen).to(DEVICE)


def _prefill(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def _decode(model, cache, tok, steps: int):
    kw = _bench.cache_keyword(model)
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=tok, use_cache=True, logits_to_keep=1, **{kw: cache})
            tok = out.logits[:, -1:].argmax(-1)
    return tok


def _median(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None)
    return getattr(inner, "median", None)


def _timed(benchmark, once, pedantic_kwargs, warm, cheap: bool = False) -> tuple[int | None, str]:
    """Time ROUNDS rounds and measure peak memory; returns (peak bytes, method).

    Full runs: one untimed call first, which warms up and measures memory precisely (peak_memory:
    CUDA allocator stats / torch.profiler allocation events). Quick CPU runs replace it by a cheap
    warm-up (`warm`: the same path on a few tokens; a full-width reference prefill takes a minute)
    and take memory as the peak-RSS delta around the timed round, which costs nothing measurable
    but includes allocator caching (and reads 0 when the allocator reuses cached pages) — unless
    `cheap` (decode: a few steps), where the precise untimed call is kept.
    """
    if QUICK and DEVICE.type == "cpu" and not cheap:
        warm()
        with _bench.RssPeak() as rss:
            benchmark.pedantic(rounds=ROUNDS, warmup_rounds=0, **pedantic_kwargs)
        return rss.peak, _bench.RssPeak.method
    peak, method = _bench.peak_memory(once, DEVICE)
    benchmark.pedantic(rounds=ROUNDS, warmup_rounds=0, **pedantic_kwargs)
    return peak, method


def _enter_variant(exits: contextlib.ExitStack, model, variant: str) -> dict:
    try:
        return exits.enter_context(_bench.model_variant(model, variant))
    except NotImplementedError as exc:  # interns2_fast.patch not in this checkout
        pytest.skip(str(exc))


@pytest.mark.parametrize("T", PREFILL_T, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("variant", PREFILL_VARIANTS)
def test_prefill(benchmark, stack, variant, T):
    ids = _tokens(1, T, seed=T)
    _bench.label(benchmark, op="e2e prefill", shape=f"{SHAPE} B=1 T={T}", backend=variant, device=DEVICE,
                 dtype=DTYPE, seq_len=T, batch=1, layers=NUM_LAYERS)
    with contextlib.ExitStack() as exits:
        info = _enter_variant(exits, stack, variant)
        peak, method = _timed(benchmark, lambda: _prefill(stack, ids), dict(target=_prefill, args=(stack, ids)),
                              warm=lambda: _prefill(stack, ids[:, :16]))
    median = _median(benchmark)
    benchmark.extra_info.update(info, peak_mem_bytes=peak, peak_mem_method=method,
                                tokens_per_s=(T / median) if median else None)


@pytest.mark.parametrize("B", DECODE_B, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("variant", DECODE_VARIANTS)
def test_decode(benchmark, stack, variant, B):
    prompt = _tokens(B, PROMPT, seed=B)
    _bench.label(benchmark, op="e2e decode", shape=f"{SHAPE} B={B} context={PROMPT}", backend=variant,
                 device=DEVICE, dtype=DTYPE, batch=B, steps=DECODE_STEPS, layers=NUM_LAYERS)
    with contextlib.ExitStack() as exits:
        info = _enter_variant(exits, stack, variant)
        out = _prefill(stack, prompt)  # once; every round decodes from a copy of its cache
        cache, first = _bench.output_cache(out), out.logits[:, -1:].argmax(-1)

        def setup():
            copied = copy.deepcopy(cache)
            _bench.synchronize(DEVICE)
            return (stack, copied, first, DECODE_STEPS), {}

        (model, c, tok, steps), _ = setup()
        peak, method = _timed(benchmark, lambda: _decode(model, c, tok, steps), dict(target=_decode, setup=setup),
                              warm=lambda: _decode(model, c, tok, 1), cheap=True)
    median = _median(benchmark)
    benchmark.extra_info.update(info, peak_mem_bytes=peak, peak_mem_method=method,
                                tokens_per_s=(B * DECODE_STEPS / median) if median else None)
