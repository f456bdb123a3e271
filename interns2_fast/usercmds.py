"""The user commands of `interns2-fast`: demo, check, generate (wired into cli.py).

Errors a user can cause (a wrong path, a folder without tokenizer, a model transformers cannot load)
print one sentence and exit with status 2, without a traceback (`UserError`).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "fp32": "float32",
          "float32": "float32", "auto": "auto"}


class UserError(Exception):
    """A problem with what the user asked for: reported as one sentence, exit status 2."""


# --- argument validation (argparse types: a bad value is one sentence and exit status 2) -----------

def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= `minimum`, else one sentence naming what it expects."""
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expects {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def prompt_text(text: str) -> str:
    """argparse type: a non-empty prompt (an empty one gives no token to predict from)."""
    import argparse

    if text == "":
        raise argparse.ArgumentTypeError("expects non-empty text, got an empty prompt")
    return text


def backend_name(text: str) -> str:
    """argparse type: "auto" or one of the op backends (`interns2_fast.ops.BACKENDS`)."""
    if text == "auto":  # the default: no need to import the ops to accept it
        return text
    import argparse

    from .ops import BACKENDS

    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"expects auto or one of {', '.join(BACKENDS)}, got {text!r}")
    return text


def one_line_errors(parser):
    """Make `parser` report a bad argument as one line, `<prog>: <message>.`, and exit with status 2
    (argparse's default prints the whole usage block first)."""
    def error(message):
        parser.exit(2, f"{parser.prog}: {message.rstrip('.')}. See {parser.prog} --help.\n")

    parser.error = error
    return parser


#: Tokenizer files AutoTokenizer loads from a local folder (named in the error for a folder without any).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.tiktoken")


def _may_hold_a_tokenizer(path: str) -> bool:
    """False only for a folder with no file that looks like a tokenizer's (and no remote-code tokenizer
    in its config.json): then AutoTokenizer's own error is a misleading one (e.g. about protobuf)."""
    import json

    names = os.listdir(path)
    if any(("token" in n or "vocab" in n or "merges" in n or n.endswith((".model", ".tiktoken"))) for n in names):
        return True
    try:
        with open(os.path.join(path, "config.json")) as f:
            return "AutoTokenizer" in (json.load(f).get("auto_map") or {})
    except (OSError, ValueError, AttributeError):
        return True  # let AutoTokenizer decide


def check_attn_implementation(name: str | None) -> None:
    """UserError for an attention implementation transformers does not register ("eager", "sdpa",
    "flash_attention_2", "paged|sdpa", ...); Hub kernels ("org/repo") are left to transformers."""
    if name is None or "/" in name:
        return
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        valid = {"eager", "paged|eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()}
    except Exception:  # noqa: BLE001  (an older layout: transformers checks it at load time)
        return
    if name not in valid:
        raise UserError(f"--attn-implementation {name!r} is not an attention implementation transformers knows; "
                        f"expected one of {', '.join(sorted(valid))}.")


# --- shared helpers -------------------------------------------------------------------------------

def _quiet_transformers():
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _torch_dtype(name: str):
    import torch

    name = DTYPES[name]
    return name if name == "auto" else getattr(torch, name)


def _default_device():
    """The first accelerator present (NPU, then CUDA), else the CPU."""
    import torch

    from . import device as dev

    if dev.npu_available():
        return torch.device("npu", 0)
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]


def devices_found() -> list[dict]:
    """Every compute device: type, index, name, free/total memory in GiB (None where unknown)."""
    import torch

    from . import device as dev

    found = []
    for kind, mod in (("npu", getattr(torch, "npu", None) if dev.npu_available() else None),
                      ("cuda", torch.cuda if torch.cuda.is_available() else None)):
        if mod is None:
            continue
        for i in range(mod.device_count()):
            free = total = None
            with contextlib.suppress(Exception):
                free, total = (x / 2**30 for x in mod.mem_get_info(i))
            found.append(dict(type=kind, index=i, name=mod.get_device_name(i), free_gib=free, total_gib=total))
    free = total = None
    with contextlib.suppress(Exception):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = pages * size / 2**30
        free = os.sysconf("SC_AVPHYS_PAGES") * size / 2**30
    found.append(dict(type="cpu", index=None, name=f"{os.cpu_count()} cores", free_gib=free, total_gib=total))
    return found


def _devices_table(found):
    from rich.table import Table

    counts: dict[str, int] = {}
    for d in found:
        counts[d["type"]] = counts.get(d["type"], 0) + 1
    t = Table(title="devices found: " + ", ".join(f"{n} x {k}" for k, n in counts.items()))
    for col in ("device", "name", "free GiB", "total GiB"):
        t.add_column(col)
    for d in found:
        label = d["type"] if d["index"] is None else f"{d['type']}:{d['index']}"
        fmt = (lambda x: "?" if x is None else f"{x:.1f}")
        t.add_row(label, str(d["name"]), fmt(d["free_gib"]), fmt(d["total_gib"]))
    return t


def _parse_max_memory(text: str | None):
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise UserError(f"--max-memory expects DEVICE=SIZE pairs such as 0=58GiB,1=58GiB, got {text!r}.")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = value.strip()
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _looks_local(path: str) -> bool:
    """Not a Hugging Face hub id ("owner/name"): a path that should exist here."""
    import re

    return re.fullmatch(r"[\w.-]+/[\w.-]+", path) is None


def _check_path(path: str) -> None:
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise UserError(f"{path} is not a model folder: it has no config.json.")
        return
    if os.path.exists(path):
        raise UserError(f"{path} is a file; --model-path expects a model folder (with config.json).")
    if _looks_local(path):
        raise UserError(f"model path {path} does not exist.")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not _may_hold_a_tokenizer(path):
        raise UserError(f"no usable tokenizer in {path}: it has none of {', '.join(TOKENIZER_FILES[:4])} (copy the model's "
                        "tokenizer files into the folder).")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    except Exception as exc:  # noqa: BLE001  (transformers raises many kinds here)
        raise UserError(f"no usable tokenizer in {path} ({_one_line(exc)}).") from None


def load_model(path: str, *, dtype="auto", device_map=None, max_memory=None, attn_implementation=None):
    """AutoModelForCausalLM with trust_remote_code; user errors become UserError."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_path(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path} holds no model configuration transformers can read ({_one_line(exc)}).") from None
    kwargs = dict(trust_remote_code=True, dtype=_torch_dtype(dtype) if isinstance(dtype, str) else dtype)
    if device_map:
        kwargs["device_map"] = device_map
    if max_memory:
        kwargs["max_memory"] = max_memory
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        msg = _one_line(exc)
        if attn_implementation and "attn_implementation" in msg:
            raise UserError(f"--attn-implementation {attn_implementation!r} is not supported for the model in {path} "
                            f"({msg}).") from None
        if "Unrecognized configuration class" in msg or "not supported" in msg.lower():
            raise UserError(f"model type {getattr(config, 'model_type', '?')!r} in {path} is not supported as a "
                            f"causal language model ({msg}).") from None
        raise UserError(f"cannot load the model in {path}: {msg}.") from None
    except (OSError, ImportError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load the model in {path}: {_one_line(exc)}.") from None


def _input_device(model):
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # noqa: BLE001
        return next(model.parameters()).device


def _chat_ids(tokenizer, prompt: str, thinking: bool | None):
    """Token ids of `prompt` through the chat template (with the thinking switch), or plain."""
    if getattr(tokenizer, "chat_template", None):
        kwargs = {} if thinking is None else {"enable_thinking": thinking}
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt", **kwargs)
        return out["input_ids"], True
    return tokenizer(prompt, return_tensors="pt")["input_ids"], False


def _encode(tokenizer, prompt: str, thinking, path: str, *, chat_template: bool = True):
    """_chat_ids (or plain tokenization), with a tokenizer that fails or gives no token as a UserError."""
    try:
        if chat_template:
            ids, templated = _chat_ids(tokenizer, prompt, thinking)
        else:
            ids, templated = tokenizer(prompt, return_tensors="pt")["input_ids"], False
    except Exception as exc:  # noqa: BLE001  (jinja, tokenizers and transformers raise many kinds)
        raise UserError(f"the tokenizer in {path} cannot encode the prompt {prompt!r} ({_one_line(exc)}).") from None
    if ids.numel() == 0:
        raise UserError(f"the tokenizer in {path} gives no tokens for the prompt {prompt!r}.")
    return ids, templated


def _vocab_size(model):
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except Exception:  # noqa: BLE001
        config = getattr(model, "config", None)
        getter = getattr(config, "get_text_config", None)
        return getattr(getter() if callable(getter) else config, "vocab_size", None)


def _progress(console):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                    transient=False)


@contextlib.contextmanager
def _step(progress, text):
    task = progress.add_task(text, total=None)
    try:
        yield
    finally:
        progress.update(task, total=1, completed=1)


# --- demo -----------------------------------------------------------------------------------------

def _time_call(fn, device, reps: int) -> float:
    """Median seconds of `fn()` over `reps` runs, after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _op_timings(recorded: dict, device, reps: int):
    """[(family, op, phase, shape, reference s, patched s, backend)] for every recorded op call."""
    import torch

    rows = []
    from .patching.state import clone_mutated

    for (name, phase), (family, op, args, kwargs, backend) in sorted(recorded.items(), key=lambda kv: (kv[1][0], kv[0])):
        def run(b, args=args, kwargs=kwargs, op=op):
            a, kw, _ = clone_mutated(op, args, kwargs)  # ops that update a state in place get a fresh copy
            with torch.no_grad():
                return op(*a, backend=b, **kw)

        bound = op.bind(args, kwargs)
        resolved = op.select(backend, op.device_of(bound), bound)
        shown = next((a for a in args if hasattr(a, "shape") and a.dim() >= 2), args[0])  # the activations
        shape = "x".join(str(d) for d in shown.shape)
        rows.append((family, name, phase, shape, _time_call(lambda: run("reference"), device, reps),
                     _time_call(lambda: run(backend), device, reps), resolved))
    return rows


def _console(stderr=False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 132)


def _per_token_counts(model, x, reference_mode, decode):
    """[(path, per-token counts)] from benchmarks/decode_loop.py when this is a source checkout, else None."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "decode_loop.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_interns2_decode_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = []
    with reference_mode(model):
        rows.append(("reference (transformers fallbacks and loop)", mod.host_counts(model, x, 5)))
    with decode.transformers_loop(model):
        rows.append(("patched, transformers' decode loop", mod.host_counts(model, x, 5)))
    rows.append(("patched, static decode", mod.host_counts(model, x, 5)))
    return rows


def cmd_demo(args) -> int:
    import torch
    from rich.table import Table

    from . import decode, models, numerics
    from .patching import patch, reference_mode
    from .patching.state import record_ops

    _quiet_transformers()
    console = _console()
    t_start = time.perf_counter()
    device = torch.device(args.device) if args.device else _default_device()
    threads = ""
    if device.type == "cpu":
        # the default model's shapes are tiny: intra-op threads cost more than they give, and on a shared
        # machine they make every timing noisy. Both paths run with the same setting.
        torch.set_num_threads(max(1, args.threads))
        threads = f", {torch.get_num_threads()} CPU thread(s)"
    console.print(f"[bold]interns2_fast demo[/bold] — built-in default model (scaled-down Intern-S2 in its "
                  f"vision-language class, random weights, seed {args.seed}) on [bold]{device}[/bold], fp32{threads}")
    with _progress(console) as progress:
        with _step(progress, "building the default model"):
            # the class the Intern-S2-Preview checkpoint loads as: the vision-language one (text prompts here)
            model = models.build_vlm("qwen3_5_moe", seed=args.seed, device=device)
            cfg = model.config.get_text_config()
        with _step(progress, "patching"):
            report = patch(model, backend=args.backend)
    for t in report.rich_tables():
        console.print(t)
    console.print(report.summary())

    ids = numerics.byte_token_ids(numerics.DEFAULT_PROMPT, cfg.vocab_size)
    with _progress(console) as progress:
        with _step(progress, "numerics: reference vs patched on the default prompt"):
            nrep = numerics.check(model, [ids])
    nrep.prompts[0].prompt = numerics.DEFAULT_PROMPT + "  (UTF-8 bytes as token ids)"
    for t in nrep.rich_tables():
        console.print(t)
    console.print(nrep.summary())

    x = torch.tensor([ids], device=device)
    gen = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False)
    def timed_generate():
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(x, **gen)
        _sync(device)
        return out, time.perf_counter() - t0

    with _progress(console) as progress, torch.no_grad():
        with _step(progress, "warm-up (both paths)"):
            with reference_mode(model):
                model.generate(x, max_new_tokens=2, do_sample=False)
            model.generate(x, max_new_tokens=2, do_sample=False)
        t_ref = t_pat = t_loop = float("inf")
        for rep in range(args.e2e_reps):  # alternate the paths; keep the best of each (shared machines)
            with _step(progress, f"greedy generation of {args.max_new_tokens} tokens, reference path "
                                 f"({rep + 1}/{args.e2e_reps})"):
                with reference_mode(model):
                    ref_ids, t = timed_generate()
                t_ref = min(t_ref, t)
            with _step(progress, f"greedy generation of {args.max_new_tokens} tokens, patched, transformers' "
                                 f"decode loop ({rep + 1}/{args.e2e_reps})"):
                with decode.transformers_loop(model):
                    loop_ids, t = timed_generate()
                t_loop = min(t_loop, t)
            with _step(progress, f"greedy generation of {args.max_new_tokens} tokens, patched, static decode "
                                 f"({rep + 1}/{args.e2e_reps})"):
                pat_ids, t = timed_generate()
                t_pat = min(t_pat, t)
        with _step(progress, "per-token host work of each path (profiler)"):
            per_token = _per_token_counts(model, x, reference_mode, decode)
        with _step(progress, "timing each patched op on the shapes of this run (reference vs patched)"):
            with record_ops() as recorded:
                model(x, use_cache=True)  # prefill shapes
                model.generate(x, max_new_tokens=2, do_sample=False)  # decode shapes
            rows = _op_timings(recorded, device, args.reps)

    same = torch.equal(ref_ids, pat_ids) and torch.equal(ref_ids, loop_ids)
    new_ref, new_pat = ref_ids[0, x.shape[1]:].tolist(), pat_ids[0, x.shape[1]:].tolist()
    console.print(f"greedy ids, reference:              {new_ref}")
    console.print(f"greedy ids, patched, static decode: {new_pat}")
    console.print(f"greedy ids, patched, transformers' loop: "
                  f"{'same' if torch.equal(loop_ids, pat_ids) else loop_ids[0, x.shape[1]:].tolist()}")
    console.print(f"[bold]{'IDENTICAL' if same else 'DIFFERENT'}[/bold]: greedy generation of "
                  f"{args.max_new_tokens} tokens with and without the patch, static decode and transformers' "
                  "loop (fp32)")

    t = Table(title=f"time per op (median of {args.reps}), reference backend vs patched, on {device}",
              caption="reference backend = interns2_fast.reference (the transformers fallbacks; the eager expert "
                      "loop for moe_experts)")
    for col in ("family", "op", "phase", "input shape", "reference ms", "patched ms", "backend", "speed-up"):
        t.add_column(col, justify="right" if col.endswith(("ms", "up")) else "left")
    fam_tot: dict = {}
    for family, op, phase, shape, t_r, t_p, backend in rows:
        t.add_row(family, op, phase, shape, f"{1e3 * t_r:.3f}", f"{1e3 * t_p:.3f}", backend, f"{t_r / t_p:.2f}x")
        acc = fam_tot.setdefault((family, phase), [0.0, 0.0, backend])
        acc[0] += t_r
        acc[1] += t_p
    console.print(t)
    f = Table(title="per op family (sum of its ops, one layer's call)")
    for col in ("family", "phase", "reference ms", "patched ms", "backend", "speed-up"):
        f.add_column(col, justify="right" if col.endswith(("ms", "up")) else "left")
    for (family, phase), (t_r, t_p, backend) in sorted(fam_tot.items()):
        f.add_row(family, phase, f"{1e3 * t_r:.3f}", f"{1e3 * t_p:.3f}", backend, f"{t_r / t_p:.2f}x")
    console.print(f)
    n = args.max_new_tokens
    e = Table(title=f"end to end: greedy generate(), {x.shape[1]}-token prompt + {n} new tokens, on {device} "
                    f"(best of {args.e2e_reps})")
    for col in ("path", "seconds", "tokens/s"):
        e.add_column(col)
    experts_impl = getattr(model.config, "_experts_implementation", None) or "eager"
    e.add_row(f"reference (transformers fallbacks; experts: {experts_impl})", f"{t_ref:.3f}", f"{n / t_ref:.1f}")
    backends = ", ".join(sorted({p.backend for p in report.patched}))
    e.add_row(f"patched ({backends}), transformers' decode loop", f"{t_loop:.3f}", f"{n / t_loop:.1f}")
    runtime = decode.settings_of(model).last_runtime() if decode.settings_of(model) else None
    runner = runtime.runner.kind if runtime is not None else "-"
    e.add_row(f"patched ({backends}), static decode ({runner} step)", f"{t_pat:.3f}", f"{n / t_pat:.1f}")
    console.print(e)
    if per_token is not None:
        c = Table(title="host work per decode token (torch.profiler on this machine; in eager mode on an NPU "
                        "each ATen op would be a launch and each sync would drain the queue: BRIEF §9)")
        for col in ("path", "ATen ops / token", "host syncs / token", "device graphs / token"):
            c.add_column(col, justify="left" if col == "path" else "right")
        for label, row in per_token:
            c.add_row(label, f"{row['aten_ops_per_token']:.1f}", f"{row['host_syncs_per_token']:.1f}",
                      f"{row['graph_replays_per_token']:.1f}")
        console.print(c)
        console.print("on an accelerator the static step is replayed as one device graph (tests/decode prove the "
                      "step sync-free on the meta device)")
    console.print(f"speed-up end to end: static decode {t_ref / t_pat:.2f}x, transformers' loop "
                  f"{t_ref / t_loop:.2f}x (vs reference) · demo took {time.perf_counter() - t_start:.1f} s")
    if not same:
        console.print("[red]greedy ids differ between the reference and the patched path[/red]")
        return 1
    return 0


# --- check ----------------------------------------------------------------------------------------

def cmd_check(args) -> int:
    import torch

    from . import models, numerics
    from .patching import patch

    _quiet_transformers()
    console = _console()
    prompts = args.prompt or [numerics.DEFAULT_PROMPT]
    if args.model_path is None:
        device = torch.device(args.device) if args.device else _default_device()
        model = models.build_causal_lm("qwen3_5_moe", models.default_config(), device=device,
                                       dtype=_torch_dtype(args.dtype) if args.dtype != "auto" else torch.float32)
        tokenizer = None
        inputs = [numerics.byte_token_ids(p, model.config.vocab_size) for p in prompts]
        console.print(f"built-in default model on {device} (no tokenizer: UTF-8 bytes are the token ids)")
    else:
        _check_path(args.model_path)
        check_attn_implementation(args.attn_implementation)
        tokenizer = load_tokenizer(args.model_path)
        model = load_model(args.model_path, dtype=args.dtype, device_map=args.device_map,
                           max_memory=_parse_max_memory(args.max_memory),
                           attn_implementation=args.attn_implementation)
        model.eval()
        inputs = []
        for p in prompts:
            ids, _ = _encode(tokenizer, p, False if args.chat_template else None, args.model_path,
                             chat_template=args.chat_template)
            inputs.append(ids[0].tolist())
    for p, ids in zip(prompts, inputs):
        if not ids:
            raise UserError(f"prompt {p!r} gives no tokens, so there is no next token to compare.")
    vocab = _vocab_size(model)
    if vocab is not None and args.top_k > vocab:
        raise UserError(f"--top-k {args.top_k} is larger than the model's vocabulary ({vocab} tokens).")
    report = patch(model, ops=tuple(args.ops), backend=args.backend)
    if not report.patched:
        raise UserError("nothing in this model matches the Gated DeltaNet / gated norm / MoE structure "
                        "interns2_fast patches, so there is nothing to check.")
    console.print(report.summary())
    nrep = numerics.check(model, inputs, top_k=args.top_k, tokenizer=tokenizer)
    if args.model_path is None:
        for r, p in zip(nrep.prompts, prompts):
            r.prompt = p + "  (UTF-8 bytes as token ids)"
    if args.markdown:
        print(nrep.to_markdown())
    else:
        for t in nrep.rich_tables():
            console.print(t)
        console.print(nrep.summary())
    return 0 if nrep.ok else 1


# --- generate -------------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    import torch
    from transformers import TextStreamer

    from .patching import patch

    _quiet_transformers()
    console = _console(stderr=True)
    found = devices_found()
    console.print(_devices_table(found))
    _check_path(args.model_path)
    max_memory = _parse_max_memory(args.max_memory)
    check_attn_implementation(args.attn_implementation)
    tokenizer = load_tokenizer(args.model_path)  # before the (slow) model load: fail fast
    _encode(tokenizer, args.prompt, args.thinking, args.model_path)  # a prompt it cannot encode: fail fast too
    t0 = time.perf_counter()
    model = load_model(args.model_path, dtype=args.dtype, device_map=args.device_map, max_memory=max_memory,
                       attn_implementation=args.attn_implementation)
    model.eval()
    placed = sorted({str(p.device) for p in model.parameters()})
    console.print(f"loaded {type(model).__name__} in {time.perf_counter() - t0:.1f} s "
                  f"({str(next(model.parameters()).dtype).replace('torch.', '')}, on {', '.join(placed)})")
    if args.no_patch:
        console.print("not patched (--no-patch): transformers' own paths")
    else:
        report = patch(model, backend=args.backend)
        console.print(report.summary() if report.patched else
                      "nothing to patch: no Gated DeltaNet / gated norm / MoE modules found (running unpatched)")
    ids, templated = _encode(tokenizer, args.prompt, args.thinking, args.model_path)
    if not templated:
        console.print("the tokenizer has no chat template: the prompt is used as plain text")
    ids = ids.to(_input_device(model))
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        gen["pad_token_id"] = tokenizer.eos_token_id
    rates = []
    with torch.no_grad():
        for run in range(1 + args.repeat):
            streamer = TextStreamer(tokenizer, skip_prompt=True) if run == 0 else None
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **gen)
            seconds = time.perf_counter() - t0
            n = out.shape[1] - ids.shape[1]
            rates.append((n, seconds))
            if run == 0:
                sys.stdout.flush()
    labels = ["first generation (warm-up included)"] + ["repeated generation"] * args.repeat
    for label, (n, seconds) in zip(labels, rates):
        console.print(f"{label}: {n} tokens in {seconds:.2f} s = {n / seconds:.2f} tokens/s")
    return 0


# --- argparse wiring ------------------------------------------------------------------------------

def _add_load_options(p):
    p.add_argument("--device-map", default=None, help='e.g. "auto" to spread the model over the devices')
    p.add_argument("--max-memory", default=None, help="per-device memory limits, e.g. 0=58GiB,1=58GiB")
    p.add_argument("--dtype", default="auto", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--attn-implementation", default=None, help='e.g. "eager"')


def add_user_commands(sub) -> None:
    """Add demo, check and generate to the `interns2-fast` sub-parsers."""
    from .numerics import DEFAULT_PROMPT
    from .patching.state import FAMILIES

    p = one_line_errors(sub.add_parser("demo", help="patch the built-in default model: report, numerics, identical "
                                                    "greedy ids, reference vs patched time per op family and end to end"))
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--backend", default="auto", type=backend_name)
    p.add_argument("--device", default=None, help="default: the first NPU/GPU, else the CPU")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per op")
    p.add_argument("--e2e-reps", type=positive_int, default=3, help="timed generations per path (best is shown)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads when running on the CPU")

    p = one_line_errors(sub.add_parser("check", help="numerics of the patched path vs the reference path on prompts "
                                                     "(top-k next tokens side by side, top-1 agreement, KL, max |Δlogit|)"))
    p.add_argument("--model-path", default=None, help="model folder (default: the built-in default model)")
    p.add_argument("--prompt", action="extend", nargs="+", metavar="TEXT", type=prompt_text,
                   help=f"one or more prompts, option repeatable (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--top-k", type=positive_int, default=10)
    p.add_argument("--backend", default="auto", type=backend_name)
    p.add_argument("--ops", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--device", default=None, help="device of the built-in default model")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="tokenize the prompt as plain text (default: through the chat template, no thinking)")
    p.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    _add_load_options(p)

    p = one_line_errors(sub.add_parser("generate", help="load a model (trust_remote_code), patch it, stream a chat "
                                                        "reply, report devices, load time and tokens/s"))
    p.add_argument("--model-path", required=True)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, type=prompt_text)
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    think = p.add_mutually_exclusive_group()
    think.add_argument("--enable-thinking", dest="thinking", action="store_const", const=True, default=None)
    think.add_argument("--no-thinking", dest="thinking", action="store_const", const=False)
    p.add_argument("--no-patch", action="store_true", help="run transformers' own paths")
    p.add_argument("--backend", default="auto", type=backend_name)
    p.add_argument("--repeat", type=non_negative_int, default=1, help="timed repetitions after the first generation")
    _add_load_options(p)


USER_COMMANDS = {"demo": cmd_demo, "check": cmd_check, "generate": cmd_generate}


def run_user_command(args) -> int:
    try:
        return USER_COMMANDS[args.command](args)
    except UserError as exc:
        print(f"interns2-fast {args.command}: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_user_commands", "run_user_command", "USER_COMMANDS", "UserError", "devices_found", "load_model",
           "load_tokenizer"]
