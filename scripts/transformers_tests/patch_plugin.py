"""pytest plugin: run transformers' own model tests with every model patched by interns2_fast.

Loaded by scripts/transformers_model_tests.sh with `-p patch_plugin` (this folder on PYTHONPATH), in
both of its passes; INTERNS2_TFTESTS_PATCH selects the pass:
  0  the baseline: the test configs are adjusted (below), no model is patched;
  1  the same, and every model is patched with `interns2_fast.patch(model)` (default arguments) as its
     construction ends.
The two passes differ only in the patch, so a test that fails in the patched pass alone is caused by it.

How the models are patched: `transformers.PreTrainedModel.post_init` is wrapped. Every transformers
model class calls `self.post_init()` as the last step of its `__init__`, so `Model(config)` (what the
model testers do), the nested base model of a `...ForCausalLM` (patched, then patched again with its
wrapper: `patch()` may be repeated) and `from_pretrained`'s construction are all covered.
`interns2_fast.enable_auto_patch()` alone would not do: it wraps `from_pretrained` only, and most tests
build the model from a config. It is enabled as well, so a model loaded by `from_pretrained` is patched
once its weights are loaded (its construction runs on the meta device, where post_init leaves it alone).

Why the configs are adjusted: transformers' `CausalLMModelTester` defaults to `hidden_act="gelu"`, and the
Qwen3.5 / Qwen3-Next gated-delta-net layer takes its activation from `config.hidden_act`; `patch()` only
implements SiLU there and would skip every GDN layer (and its gated norm), leaving the linear-attention
path untested. So the testers' text configs are forced to `hidden_act="silu"` (the real models' value),
in both passes. The vision-language testers already use "silu" for the text model (their vision tower
keeps its gelu: it has no patched module).

INTERNS2_TFTESTS_STATS, when set, is a folder where each pytest process (each xdist worker) writes what
the patches did (models patched, modules patched per op family, skip reasons), so the driver can check
that the GDN, MoE, ... paths were really exercised.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import sys

import pytest

PATCH = os.environ.get("INTERNS2_TFTESTS_PATCH", "0") == "1"
FORCED_ACT = "silu"

_STATS = {"models": 0, "patch_errors": collections.Counter(), "patched": collections.Counter(),
          "skipped": collections.Counter(), "model_types": collections.Counter()}


def _record(model) -> None:
    import interns2_fast

    report = interns2_fast.last_report(model)
    if report is None:
        return
    _STATS["models"] += 1
    _STATS["model_types"][type(model).__name__] += 1
    for p in report.patched:
        _STATS["patched"][p.op] += 1
    for s in report.skipped:
        _STATS["skipped"][f"{s.op}: {s.reason}"] += 1


def _install_patching() -> None:
    import interns2_fast
    from transformers import PreTrainedModel

    original = PreTrainedModel.post_init

    @functools.wraps(original)
    def post_init(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if any(p.is_meta for p in self.parameters()):
            return out  # from_pretrained's construction: patched once loaded (enable_auto_patch)
        try:
            interns2_fast.patch(self)
        except Exception as exc:  # counted, then raised: the test that built this model fails
            _STATS["patch_errors"][f"{type(self).__name__}: {type(exc).__name__}: {exc}"] += 1
            raise
        _record(self)
        return out

    PreTrainedModel.post_init = post_init
    interns2_fast.enable_auto_patch()


def _force_silu(tester_cls) -> None:
    if getattr(tester_cls, "_interns2_silu", False):
        return
    init = tester_cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.hidden_act = FORCED_ACT

    tester_cls.__init__ = __init__
    tester_cls._interns2_silu = True


def pytest_configure(config):
    if PATCH:
        _install_patching()


def pytest_collection_modifyitems(session, config, items):
    # The test modules are imported by now; the CausalLMModelTester they use is the one to adjust
    # (looked up through them: the module's import name depends on pytest's rootdir handling).
    seen = set()
    for item in items:
        mod = getattr(item, "module", None)
        if mod is None or id(mod) in seen:
            continue
        seen.add(id(mod))
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, type) and any(c.__name__ == "CausalLMModelTester" for c in obj.__mro__):
                base = next(c for c in obj.__mro__ if c.__name__ == "CausalLMModelTester")
                _force_silu(base)


def pytest_unconfigure(config):
    folder = os.environ.get("INTERNS2_TFTESTS_STATS")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(folder, f"stats-{worker}-{os.getpid()}.json"), "w") as f:
        json.dump({"patch": PATCH, **{k: (dict(v) if isinstance(v, collections.Counter) else v)
                                      for k, v in _STATS.items()}}, f, indent=1, sort_keys=True)
