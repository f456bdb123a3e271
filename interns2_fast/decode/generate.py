"""`model.generate()` through the static decode step.

`install(model, mode)` (called by `interns2_fast.patch(model, static_decode=...)`) stores a small
`DecodeSettings` object in `model.__dict__` and, once per model CLASS, replaces the class's
`_sample` (what `generate()` calls for greedy search and sampling) with a dispatcher that looks
that object up on the instance: instances without it — every other model of the class, or this
one after `unpatch()` / `patch(..., static_decode=False)` — run transformers' own `_sample`
unchanged. Nothing closes over the model, so a patched model deep-copies and pickles (the copy
keeps the settings and drops the runtime: buffers and graphs are rebuilt on first use).
Beam search and assisted decoding get the same dispatcher, which only adds a one-time note and
hands over to transformers.

The static `_sample` keeps everything `generate()` prepared (generation config, logits
processors, stopping criteria, special tokens, attention mask, position ids) and does what
transformers' loop does, in the same order, so the tokens are the same:

1. prefill: the model's own `_prefill` (eager, the model's own cache class);
2. the state goes into a `StaticDecodeCache` (allocated once per batch size and length bucket,
   its step captured once on CUDA / Ascend), the attention mask and position ids into the step's
   static buffers;
3. per token: logits processors on the fp32 logits, argmax or `torch.multinomial` (same RNG use
   as transformers), eos / pad handling, stopping criteria; then the token is copied into the
   step's input buffer and the step is replayed (no `torch.cat`, no cache objects, no mask
   building, no `prepare_inputs_for_generation`, and transformers' per-token
   `_optimize_model_for_decode` — two `set_experts_implementation` walks over every module per
   token on non-CPU devices in 5.2 — is entered once per generate() instead).

On accelerators "all sequences finished?" (a host sync) is asked every `DEFERRED_STOP_CHECK` (16)
tokens instead of every token (`DecodeSettings.stop_check_every` overrides it, on any device);
steps run past the finish are cut off afterwards (the tokens and scores are those transformers
returns). With a streamer or `return_dict_in_generate` (whose cache is
written back from the static state) it is asked every token.

The first step of every new runtime is checked (`check_first_step`): before the token it follows is
streamed, the static step and the model's own forward (on the prefill's cache, as transformers' loop would
run it) take the same token, and their logits must agree within the dtype's tolerance
(`compare.VERIFY_TOLERANCES`). A step that raises (a cache method or keyword this code does not know) or
disagrees (a position or cache convention it does not follow) sends the generation to transformers' own
loop — from a copy of the empty cache generate() made and the random state before the first token, so
the tokens are transformers' — with a one-time note naming the error and the transformers version; the
model then stays on transformers' loop until it is patched again (`DecodeSettings.refused`).

Inside `patching.reference_mode(model)` generate() is transformers' own (loop included), silently.
Not supported, handed to transformers' loop with a one-time note: beam search, assisted decoding,
synced GPUs, `output_attentions` / `output_hidden_states`, continuing from a passed non-empty
cache, training mode, attention implementations other than eager / sdpa, models whose layers are
not found by structure (`step.find_parts`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect

import torch

from ..patching.caches import cache_protocol
from .graph import MODES, choose_mode, make_runner, note_once
from .static_cache import StaticDecodeCache, UnsupportedCache, read_cache_states
from .step import DecodeStep, ModelParts, find_parts

ATTR = "_interns2_fast_decode"
_DISPATCH_MARK = "__interns2_fast_dispatch__"
#: decode methods of transformers' GenerationMixin that get the instance dispatcher (None: note + hand over)
_HANDLED = ("_sample",)
_HANDED_OVER = ("_beam_search", "_assisted_decoding")
CACHE_NAMES = ("past_key_values", "cache", "cache_params")
LENGTH_BUCKET = 64
DEFERRED_STOP_CHECK = 16


@dataclasses.dataclass
class Runtime:
    key: tuple
    step: DecodeStep
    runner: object
    #: the first step on this runtime was compared with the model's own forward and agreed
    checked: bool = False


@dataclasses.dataclass
class DecodeSettings:
    """Per-model static-decode settings (in model.__dict__); `runtimes` is rebuilt, never copied."""

    mode: str = "auto"
    #: tokens between "all finished?" host reads; None: every token on the CPU, DEFERRED_STOP_CHECK elsewhere
    stop_check_every: int | None = None
    stats: dict = dataclasses.field(default_factory=lambda: {"static": 0, "handed_over": 0, "steps": 0})
    runtimes: dict = dataclasses.field(default_factory=dict, repr=False)
    #: why the first-step check refused the static step for this model (then every generate() is transformers')
    refused: str | None = None

    def __deepcopy__(self, memo):
        return DecodeSettings(self.mode, self.stop_check_every, refused=self.refused)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["runtimes"] = {}
        return state

    def last_runtime(self) -> Runtime | None:
        return next(reversed(self.runtimes.values()), None)


def settings_of(model) -> DecodeSettings | None:
    return getattr(model, "__dict__", {}).get(ATTR)


def install(model, mode: bool | str = True, *, stop_check_every: int | None = None) -> DecodeSettings | None:
    """Make `model.generate()` decode through the static step (`mode` False: transformers' loop)."""
    if mode is False or mode is None:
        uninstall(model)
        return None
    mode = "auto" if mode is True else mode
    if mode not in MODES:
        raise ValueError(f"interns2_fast.patch: static_decode must be True, False or one of {MODES}, got {mode!r}")
    if not callable(getattr(type(model), "_sample", None)):
        return None  # not a transformers generation model: nothing to hook
    _install_class_dispatch(type(model))
    settings = DecodeSettings(mode, stop_check_every)
    model.__dict__[ATTR] = settings  # a repeated patch() starts from fresh runtimes (forwards may have changed)
    return settings


def uninstall(model) -> bool:
    return getattr(model, "__dict__", {}).pop(ATTR, None) is not None


@contextlib.contextmanager
def transformers_loop(model):
    """Inside this block `model.generate()` runs transformers' own decode loop (the patched modules stay)."""
    settings = getattr(model, "__dict__", {}).pop(ATTR, None)
    try:
        yield
    finally:
        if settings is not None:
            model.__dict__[ATTR] = settings


def _install_class_dispatch(cls) -> None:
    for name in _HANDLED + _HANDED_OVER:
        current = cls.__dict__.get(name)
        if current is not None and getattr(current, _DISPATCH_MARK, None) is not None:
            continue
        original = inspect.getattr_static(cls, name, None)
        if original is None or not callable(original):
            continue
        setattr(cls, name, _make_dispatch(name, original, static_sample if name in _HANDLED else None))


def _make_dispatch(name, original, handler):
    @functools.wraps(original)
    def dispatch(self, *args, **kwargs):
        settings = settings_of(self)
        if settings is None:
            return original(self, *args, **kwargs)
        if handler is None:
            settings.stats["handed_over"] += 1
            note_once(f"static decode does not cover {name.strip('_').replace('_', ' ')}; "
                      "using transformers' own generate loop for it")
            return original(self, *args, **kwargs)
        return handler(self, settings, original, *args, **kwargs)

    setattr(dispatch, _DISPATCH_MARK, original)
    return dispatch


# --- the static _sample ----------------------------------------------------------------------------

def _passed_cache(model_kwargs):
    for name in CACHE_NAMES:
        if model_kwargs.get(name) is not None:
            return model_kwargs[name]
    return None


def _in_reference_mode(model) -> bool:
    """Inside `patching.reference_mode(model)` generate() is transformers' own, loop included."""
    from ..patching.state import patched_states

    return any(s.suspended for s in patched_states(model))


def _unsupported(model, parts, generation_config, synced_gpus, model_kwargs) -> str | None:
    if isinstance(parts, str):
        return parts
    if synced_gpus:
        return "synced_gpus"
    if getattr(generation_config, "is_assistant", False):
        return "an assistant model's loop"
    if generation_config.output_attentions or generation_config.output_hidden_states:
        return "output_attentions / output_hidden_states"
    if model_kwargs.get("use_cache") is False:
        return "use_cache=False"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder models"
    if model.training:
        return "a model in training mode"
    cache = _passed_cache(model_kwargs)
    if cache is not None:
        if cache_protocol(cache) is None:
            return f"a passed cache of type {type(cache).__name__}"
        try:
            filled = cache.get_seq_length() > 0
        except Exception:  # noqa: BLE001  (a cache that cannot tell is treated as filled)
            filled = True
        if filled:
            return "continuing from a passed non-empty cache"
    return None


def _output_cache(outputs, model_kwargs):
    for name in CACHE_NAMES:
        value = outputs.get(name) if hasattr(outputs, "get") else getattr(outputs, name, None)
        if value is not None:
            return value
    return _passed_cache(model_kwargs)


def _first_done(pending) -> int | None:
    """One host read for a window of deferred "all finished?" flags: the length at the first True."""
    if not pending:
        return None
    flags = torch.stack([flag for _, flag in pending]).tolist()
    for (length, _), done in zip(pending, flags):
        if done:
            return length
    return None


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def build_step(parts: ModelParts, states, batch: int, need: int, protocol: str = "legacy",
               position_shape: tuple[int, ...] | None = None) -> DecodeStep:
    """A decode step on a new static cache shaped like `states` for `batch` sequences of up to `need`
    positions (rounded up to LENGTH_BUCKET); load it with `step.load` before running it."""
    device, dtype = parts.embed.weight.device, parts.embed.weight.dtype
    max_len = _round_up(need + 1, LENGTH_BUCKET)
    cache = StaticDecodeCache(states, batch, max_len, torch.zeros(1, dtype=torch.long, device=device), protocol)
    vocab = getattr(parts.lm_head, "out_features", None) or parts.lm_head.weight.shape[0]
    return DecodeStep(parts, cache, vocab_size=vocab, dtype=dtype, device=device, position_shape=position_shape)


def runtime_for(model, settings: DecodeSettings, parts: ModelParts, states, batch: int, need: int,
                position_shape: tuple[int, ...], protocol: str = "legacy") -> Runtime:
    """The static cache + step + runner for this batch size (reused while it fits; one kept per model)."""
    device, dtype = parts.embed.weight.device, parts.embed.weight.dtype
    devices = {p.device for p in model.parameters()}
    kind = choose_mode(settings.mode, devices)
    key = (batch, tuple(position_shape), device, dtype, kind, protocol)
    rt = settings.runtimes.get(key)
    if rt is not None and rt.step.cache.fits(states, batch, need) and rt.step.cache.max_len <= max(2 * need, need + 256):
        return rt
    settings.runtimes.clear()  # free the previous buffers (and graph) before allocating new ones
    step = build_step(parts, states, batch, need, protocol, position_shape)
    runner = make_runner(step, kind, device)
    rt = Runtime(key, step, runner)
    settings.runtimes[key] = rt
    return rt


def _prompt_positions(model_kwargs, batch: int, kv_len: int, device) -> torch.Tensor:
    """Position ids of the prompt as generate() / prepare_inputs_for_generation give them."""
    pos = model_kwargs.get("position_ids")
    if pos is not None:
        return pos
    am = model_kwargs.get("attention_mask")
    if am is not None:
        pos = am.long().cumsum(-1) - 1
        return pos.masked_fill(am == 0, 0)
    return torch.arange(kv_len, device=device).unsqueeze(0).expand(batch, -1)


def _pristine(model_kwargs) -> dict:
    """`model_kwargs` with copies of the caches in it (generate() passes the empty cache it created), taken
    before the prefill fills them: what transformers' loop starts from if the static path hands over."""
    out = dict(model_kwargs)
    for name in CACHE_NAMES:
        if out.get(name) is not None:
            out[name] = copy.deepcopy(out[name])
    return out


def _rng_state(device: torch.device):
    mod = getattr(torch, device.type, None) if device.type != "cpu" else None
    return torch.get_rng_state(), (mod.get_rng_state(device) if hasattr(mod, "get_rng_state") else None)


def _restore_rng(device: torch.device, state) -> None:
    cpu, dev = state
    torch.set_rng_state(cpu)
    if dev is not None:
        getattr(torch, device.type).set_rng_state(dev, device)


def _transformers_version() -> str:
    import transformers

    return f"transformers {transformers.__version__}"


def _problem_of(exc: BaseException) -> str:
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first_line} ({_transformers_version()})"


def _one_token(model_kwargs) -> dict:
    """What transformers' loop adds to `prepare_inputs_for_generation` for one new token: 5.25 slices the
    ids by `next_sequence_length` (earlier releases by `cache_position`)."""
    from transformers.generation.utils import GenerationMixin

    if "next_sequence_length" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters:
        return {"next_sequence_length": 1 if model_kwargs.get("use_cache", True) else None}
    return {}


def check_first_step(model, rt: Runtime, prefill_outputs, seq: torch.Tensor, model_kwargs) -> str | None:
    """Run the static step for the token in `rt.step.input_ids` and the model's own forward for the same
    token on the prefill's cache (what transformers' loop would run next); None when their logits agree
    within the dtype's tolerance, else why the static step does not run this model as its forward does.

    Its cost does not depend on the prompt's length (one decode token through each path). The prefill's
    cache takes the token too; it is read again only by `export_to`, which overwrites what it reads."""
    from ..compare import compare_tensors

    try:
        rt.runner.run()
    except Exception as exc:  # noqa: BLE001  (an unknown layer/cache convention must not break generate())
        return f"static decode: the step fails on this model ({_problem_of(exc)})"
    try:
        kwargs = model._update_model_kwargs_for_generation(prefill_outputs, dict(model_kwargs),
                                                           is_encoder_decoder=False)
        inputs = model.prepare_inputs_for_generation(seq, **_one_token(kwargs), **kwargs)
        own = model(**inputs, return_dict=True).logits[:, -1, :].float()
    except Exception as exc:  # noqa: BLE001
        return f"static decode: cannot run the model's own decode forward to check the step ({_problem_of(exc)})"
    got = rt.step.logits.to(own.device)
    result = compare_tensors(got, own, dtype=rt.step.mask.dtype)
    if not result.ok:
        return (f"static decode: the step's logits differ from the model's own forward for the same token (RMS "
                f"ratio {result.rms_ratio:.2e}, max |diff| {result.max_abs:.2e}; {_transformers_version()})")
    return None


def _output_class_kwargs(cls, cache):
    names = {f.name for f in dataclasses.fields(cls)}
    key = "past_key_values" if "past_key_values" in names else ("cache" if "cache" in names else None)
    return {key: cache} if key else {}


def static_sample(model, settings: DecodeSettings, original, input_ids, logits_processor, stopping_criteria,
                  generation_config, synced_gpus=False, streamer=None, **model_kwargs):
    """transformers' `_sample` (greedy / sampling) with the decode loop on the static step."""

    def transformers_loop(kwargs):
        return original(model, input_ids, logits_processor, stopping_criteria, generation_config,
                        synced_gpus=synced_gpus, streamer=streamer, **kwargs)

    if _in_reference_mode(model):
        return transformers_loop(model_kwargs)
    if settings.refused is not None:  # the first-step check found a mismatch (noted then): transformers' loop
        settings.stats["handed_over"] += 1
        return transformers_loop(model_kwargs)
    parts = find_parts(model)
    reason = _unsupported(model, parts, generation_config, synced_gpus, model_kwargs)
    if reason is not None:
        settings.stats["handed_over"] += 1
        note_once(f"static decode does not cover {reason}; using transformers' own generate loop")
        return transformers_loop(model_kwargs)

    pad_token_id = generation_config._pad_token_tensor
    return_dict = generation_config.return_dict_in_generate
    scores = () if (return_dict and generation_config.output_scores) else None
    raw_logits = () if (return_dict and generation_config.output_logits) else None
    has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
    do_sample = generation_config.do_sample
    batch, cur = input_ids.shape[:2]
    start = cur
    max_length = max(generation_config.max_length, cur + 1)
    if pad_token_id is not None:
        pad_token_id = pad_token_id.to(input_ids.device)

    # What a hand-over to transformers' loop after the prefill needs: the kwargs with the (still empty) cache
    # generate() created, and the random state before the first token is drawn.
    untouched = _pristine(model_kwargs)
    rng = _rng_state(input_ids.device)

    def hand_over(reason: str):
        settings.stats["handed_over"] += 1
        note_once(f"{reason}; using transformers' own generate loop")
        _restore_rng(input_ids.device, rng)
        return transformers_loop(untouched)

    outputs = model._prefill(input_ids, generation_config, model_kwargs)
    cache = _output_cache(outputs, model_kwargs)
    try:
        states = read_cache_states(cache, parts.kinds)
    except UnsupportedCache as exc:  # the model built a cache this code does not know: redo it the usual way
        return hand_over(str(exc))
    logits = outputs.logits[:, -1, :].to(copy=True, dtype=torch.float32, device=input_ids.device)

    attn = [s for s in states if s.kind == "attention"]
    am = model_kwargs.get("attention_mask")
    kv_len = attn[0].a.shape[2] if attn else (am.shape[1] if am is not None else cur)
    steps_max = max_length - cur - 1  # decode steps after the prefill's token
    prompt_pos = _prompt_positions(model_kwargs, batch, kv_len, input_ids.device)
    next_pos = prompt_pos[..., -1:] + 1

    seq = torch.empty(batch, max_length, dtype=input_ids.dtype, device=input_ids.device)
    seq[:, :cur] = input_ids
    unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)
    every = settings.stop_check_every
    if every is None:
        every = 1 if input_ids.device.type == "cpu" else DEFERRED_STOP_CHECK
    if streamer is not None or return_dict:
        every = 1
    pending: list = []
    final = None

    optimize = getattr(model, "_optimize_model_for_decode", None)
    with (optimize() if optimize is not None else contextlib.nullcontext()):
        rt = None
        if steps_max > 0:
            rt = runtime_for(model, settings, parts, states, batch, kv_len + steps_max, tuple(next_pos.shape),
                             cache_protocol(cache))
            rt.step.load(states, kv_len, am, next_pos)
        del states
        # The first step of a new runtime runs beside the model's own forward (on the prefill's cache) for the
        # same token before anything is streamed; the prefill outputs are kept for that and dropped after.
        first_check = outputs if rt is not None and not rt.checked else None
        del outputs
        stepped = False
        while True:
            next_scores = logits_processor(seq[:, :cur], logits)
            if scores is not None:
                scores += (next_scores,)
            if raw_logits is not None:
                raw_logits += (logits,)
            if do_sample:
                probs = torch.nn.functional.softmax(next_scores, dim=-1)
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                tokens = torch.argmax(next_scores, dim=-1)
            if has_eos:
                tokens = tokens * unfinished + pad_token_id * (1 - unfinished)
            seq[:, cur] = tokens
            cur += 1
            unfinished = unfinished & ~stopping_criteria(seq[:, :cur], scores)
            if first_check is not None:
                if cur < max_length and bool(unfinished.max() > 0):  # (one host read, once per runtime)
                    rt.step.input_ids.copy_(tokens.view(batch, 1))
                    problem = check_first_step(model, rt, first_check, seq[:, :cur], model_kwargs)
                    if problem is not None:
                        settings.refused = problem
                        settings.runtimes.clear()
                        return hand_over(problem)
                    rt.checked = stepped = True
                first_check = None
            if streamer is not None:
                streamer.put(tokens.cpu())
            if cur >= max_length:
                break
            pending.append((cur, unfinished.max() == 0))
            if len(pending) >= every:
                final, pending = _first_done(pending), []
                if final is not None:
                    break
            if not stepped:
                rt.step.input_ids.copy_(tokens.view(batch, 1))
                rt.runner.run()
            stepped = False
            settings.stats["steps"] += 1
            logits = rt.step.logits.clone()
        if final is None:
            final = _first_done(pending) or cur

    settings.stats["static"] += 1  # (counted once the generation stayed on the static path)
    if streamer is not None:
        streamer.end()
    generated = final - start
    sequences = seq[:, :final].contiguous()
    if not return_dict:
        return sequences
    if scores is not None:
        scores = scores[:generated]
    if raw_logits is not None:
        raw_logits = raw_logits[:generated]
    if rt is not None and cache is not None:
        # every=1 here: the static state is exactly that of the last token fed (final - 1 positions)
        if not rt.step.cache.export_to(cache, kv_len + generated - 1):
            cache = None
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=raw_logits, attentions=None,
                                     hidden_states=None, **_output_class_kwargs(GenerateDecoderOnlyOutput, cache))
