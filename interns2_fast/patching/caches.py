"""The cache protocols of transformers' hybrid (attention + linear-attention) models, in one place.

Chosen from what the cache object offers, never from the transformers version:

* "legacy" (transformers 5.2 - 5.14 and the Intern-S2-Preview remote code): lists
  `conv_states[i]` / `recurrent_states[i]` / `key_cache[i]` / `value_cache[i]` and a
  `has_previous_state` flag (an attribute, not a method);
* "layered" (5.15+): `cache.layers[i]`, `update_conv_state` / `update_recurrent_state` and a
  `has_previous_state(i)` method. Newer releases (5.24.0) add the getters `get_conv_state(i)` /
  `get_recurrent_state(i)` / `is_recording_past(i)`; the releases before them (5.15.1, 5.18.0
  checked) keep the states in `cache.layers[i].conv_states[0]` / `.recurrent_states[0]` with a
  `.record_past` flag. `linear_states` reads both forms.

Used by the patched Gated DeltaNet forward (`patching.gdn`) and by the static decode cache
(`decode.static_cache`), which reads a prefill's state out of such a cache and writes it back.
"""
from __future__ import annotations


def cache_protocol(cache) -> str | None:
    """'legacy' / 'layered' for a cache this package knows, else None (also for `None`)."""
    if cache is None:
        return None
    if hasattr(cache, "get_conv_state") and hasattr(cache, "update_conv_state"):
        return "layered"
    if hasattr(cache, "conv_states") and hasattr(cache, "recurrent_states") and hasattr(cache, "has_previous_state"):
        return "legacy"
    if (hasattr(cache, "layers") and callable(getattr(cache, "has_previous_state", None))
            and hasattr(cache, "update_conv_state") and hasattr(cache, "update_recurrent_state")):
        return "layered"  # 5.15.1 - 5.18.0: no get_conv_state / get_recurrent_state yet
    return None


def linear_states(cache, i: int):
    """(conv_state, recurrent_state, recording_past) of linear-attention layer i; (None, None, False)
    when the layer holds no state yet."""
    if cache_protocol(cache) == "legacy":
        return cache.conv_states[i], cache.recurrent_states[i], False
    if hasattr(cache, "get_conv_state"):
        return cache.get_conv_state(i), cache.get_recurrent_state(i), cache.is_recording_past(i)
    if not cache.has_previous_state(i):
        return None, None, False
    layer = cache.layers[i]
    return layer.conv_states[0], layer.recurrent_states[0], bool(getattr(layer, "record_past", False))


def attention_kv(cache, i: int):
    """(keys, values) of full-attention layer i, or (None, None)."""
    if cache_protocol(cache) == "legacy":
        return cache.key_cache[i], cache.value_cache[i]
    layer = cache.layers[i]
    return getattr(layer, "keys", None), getattr(layer, "values", None)
