"""Tiny models of every family, built once per test process and handed out unpatched (shared by the
patching and decode tests; imported by name, like tolerance.py)."""
import torch

from interns2_fast import models
from interns2_fast.patching import unpatch

_MODELS: dict = {}


def tiny_model(family: str = "qwen3_5_moe", dtype=torch.float32):
    """A cached tiny model of `family` (unpatched on every hand-out)."""
    key = (family, dtype)
    if key not in _MODELS:
        _MODELS[key] = models.build_causal_lm(family, dtype=dtype)
    model = _MODELS[key]
    unpatch(model)
    return model
