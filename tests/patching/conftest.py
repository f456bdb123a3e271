"""Shared helpers for the patching tests, and quiet loading."""
import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import transformers  # noqa: E402
from tiny_models import tiny_model  # noqa: E402  (tests/tiny_models.py; model_factory is in tests/conftest.py)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


def linear_layer_ids(model):
    return [i for i, t in enumerate(model.config.layer_types) if t == "linear_attention"]


def linear_states(cache, layer_ids):
    """[(conv_state, recurrent_state)] of the linear-attention layers, whatever the cache protocol."""
    from interns2_fast.patching.caches import linear_states as read

    return [read(cache, i)[:2] for i in layer_ids]


def rms_ratio(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


TRANSFORMERS_VERSION = transformers.__version__


@pytest.fixture
def ph():
    """Helpers for the patching tests (conftest functions are not importable under importlib mode)."""
    import types

    return types.SimpleNamespace(linear_states=linear_states, rms_ratio=rms_ratio, linear_layer_ids=linear_layer_ids,
                                 tiny_model=tiny_model)
