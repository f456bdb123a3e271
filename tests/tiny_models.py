"""Tiny models of every family, built once per test process and handed out unpatched (shared by the
patching and decode tests; imported by name, like tolerance.py)."""
import io
import pickle

import torch

from interns2_fast import models
from interns2_fast.patching import unpatch

_MODELS: dict = {}


def tiny_model(family: str = "qwen3_5_moe", dtype=torch.float32):
    """A cached tiny model of `family` (unpatched on every hand-out)."""
    key = (family, dtype)
    model = _MODELS.get(key)
    if model is not None:
        unpatch(model)
    if model is None or _has_hooks(model):
        # a call that recorded hidden states / router logits leaves transformers' capture hooks on the
        # modules for good (they change which path the patched MoE block takes): hand out a fresh one
        model = _MODELS[key] = models.build_causal_lm(family, dtype=dtype)
    return model


def _has_hooks(model) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def round_trip(model, how: str):
    """`model` through pickle or torch.save / torch.load (`how`: "pickle" or "torch.save")."""
    if how == "pickle":
        return pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)
