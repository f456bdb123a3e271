"""Preallocated, fixed-address caches for the static decode step.

`StaticDecodeCache` holds, per decoder layer, either the K/V of a full-attention layer
([B, Hkv, max_len, D], written at a position, read whole under a mask: no `torch.cat`, nothing
grows) or the conv state [B, C, W] and recurrent state [B, Hv, K, V] of a linear-attention layer
(updated in place). Every tensor is allocated once; a decode step only writes into them.

It speaks both cache protocols that transformers' hybrid models (and the patched layers in
`interns2_fast.patching.gdn`) use, so the model's own decoder layers run on it unchanged:

* "legacy" (transformers 5.2 - 5.14 and the Intern-S2-Preview remote code): lists
  `conv_states[i]` / `recurrent_states[i]`, `has_previous_state`, `update(k, v, layer_idx, ...)`.
  Assigning into the lists copies into the static tensor (the unpatched 5.2 layer assigns a new
  recurrent state every step), so addresses never change;
* "layered" (5.15+): `has_previous_state(i)`, `get_conv_state` / `get_recurrent_state` (5.24; 5.25 adds
  `increase_count` and `get_recurrent_states_to_keep`) or
  `layers[i].conv_states[0]` / `.recurrent_states[0]` / `.record_past` (5.15.1 - 5.18.0),
  `update_recurrent_state` (a copy into the static tensor) / `is_recording_past`, and the same
  `update` (5.24 passes no position: the cache writes at its own `position` buffer, which the step
  advances on the device).

Which of the two `has_previous_state` forms it offers (a flag or a method) is the prefill cache's
protocol (`patching.caches.cache_protocol`), passed at construction.

The prefill runs eagerly in the model's own cache (whatever class the model or the remote code
creates); `read_cache_states` reads it by protocol, `StaticDecodeCache.load` copies it in, and
`export_to` writes the decoded state back into that cache object (for `return_dict_in_generate`).
"""
from __future__ import annotations

import dataclasses

import torch

from ..patching.caches import attention_kv, cache_protocol, linear_states


class UnsupportedCache(TypeError):
    """The prefill left a cache object whose layout the static decode does not know."""


@dataclasses.dataclass
class LayerState:
    kind: str  # "attention" | "linear"
    a: torch.Tensor | None  # keys | conv state
    b: torch.Tensor | None  # values | recurrent state


def read_cache_states(cache, kinds: list[str]) -> list[LayerState]:
    """The per-layer tensors a prefill left in `cache` (a transformers / remote-code cache object)."""
    if cache_protocol(cache) is None:
        raise UnsupportedCache(f"interns2_fast static decode: unknown cache type {type(cache).__name__} "
                               "(expected conv_states/recurrent_states/key_cache lists or a layered Cache)")
    out = []
    for i, kind in enumerate(kinds):
        try:
            a, b = attention_kv(cache, i) if kind == "attention" else linear_states(cache, i)[:2]
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise UnsupportedCache(f"interns2_fast static decode: cannot read layer {i} ({kind}) of "
                                   f"{type(cache).__name__}: {exc}") from exc
        if a is None or b is None or a.numel() == 0:
            raise UnsupportedCache(f"interns2_fast static decode: layer {i} ({kind}) has no state after the prefill "
                                   f"in {type(cache).__name__}")
        out.append(LayerState(kind, a, b))
    return out


class _InPlaceList(list):
    """A list whose item assignment copies into the tensor already there (fixed addresses)."""

    def __setitem__(self, index, value):
        current = list.__getitem__(self, index)
        if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
            if value is not current:
                current.copy_(value)
            return
        list.__setitem__(self, index, value)


class _LinearLayerView:
    """One linear-attention layer of the static cache in the shape of transformers' LinearAttentionLayer."""

    record_past = False

    def __init__(self, conv: torch.Tensor, recurrent: torch.Tensor):
        self.conv_states = {0: conv}
        self.recurrent_states = {0: recurrent}
        self.has_previous_state = {0: True}


class StaticDecodeCache:
    """Fixed-address per-layer decode state (see the module docstring)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, like: list[LayerState], batch: int, max_len: int, position: torch.Tensor,
                 protocol: str = "legacy"):
        if protocol not in ("legacy", "layered"):
            raise ValueError(f"interns2_fast static decode cache: protocol {protocol!r} (expected 'legacy' or 'layered')")
        self.kinds = [s.kind for s in like]
        self.protocol = protocol
        if protocol == "legacy":
            # the legacy layers read `cache.has_previous_state` as a flag; the layered ones call it
            self.has_previous_state = True
        self.batch = batch
        self.max_len = max_len
        #: [1] int64: the position this step writes (= transformers' cache_position); advanced by the step
        self.position = position
        n = len(like)
        self.key_cache: list = [None] * n
        self.value_cache: list = [None] * n
        self._conv: list = [None] * n  # plain lists for the step's reads (what torch.compile traces)
        self._rec: list = [None] * n
        self._positions = {position.device: position}
        #: per device holding K/V: [B] int32, the valid positions including this step's (= position + 1),
        #: what the patched attention layer (patching/attention.py) passes its ops; advanced by the step
        self._lens: dict = {}
        for i, s in enumerate(like):
            if s.kind == "attention":
                B, H, _, D = s.a.shape
                self.key_cache[i] = torch.zeros(batch, H, max_len, D, dtype=s.a.dtype, device=s.a.device)
                self.value_cache[i] = torch.zeros(batch, s.b.shape[1], max_len, s.b.shape[-1], dtype=s.b.dtype,
                                                  device=s.b.device)
                self._positions.setdefault(s.a.device, torch.zeros_like(position, device=s.a.device))
                self._lens.setdefault(s.a.device, torch.ones(batch, dtype=torch.int32, device=s.a.device))
            else:
                self._conv[i] = torch.zeros((batch, *s.a.shape[1:]), dtype=s.a.dtype, device=s.a.device)
                self._rec[i] = torch.zeros((batch, *s.b.shape[1:]), dtype=s.b.dtype, device=s.b.device)
        #: the legacy protocol's lists: same tensors, assignment copies in place
        self.conv_states = _InPlaceList(self._conv)
        self.recurrent_states = _InPlaceList(self._rec)
        #: the layered protocol's per-layer objects, as the releases before the state getters read them
        #: (5.15.1 - 5.18.0: `cache.layers[i].conv_states[0]`, `.recurrent_states[0]`, `.record_past`)
        self.layers = [_LinearLayerView(self._conv[i], self._rec[i]) if k == "linear" else None
                       for i, k in enumerate(self.kinds)]

    # --- what the step and the tests read ---------------------------------------------------------
    def buffers(self) -> dict[str, torch.Tensor]:
        """Every static tensor of the cache, by name."""
        out = {"position": self.position}
        for i in range(len(self.kinds)):
            for name, lst in (("key", self.key_cache), ("value", self.value_cache), ("conv", self._conv),
                              ("recurrent", self._rec)):
                t = lst[i]
                if t is not None:
                    out[f"{name}.{i}"] = t
        for dev, t in self._positions.items():
            if t is not self.position:
                out[f"position.{dev}"] = t
        for dev, t in self._lens.items():
            out[f"lens.{dev}"] = t
        return out

    def static_attention(self, layer_idx: int):
        """(keys, values, lens) of a full-attention layer: the static K/V [B, Hkv, max_len, D] and the
        device-side valid length [B] int32 (this step's position + 1); None for another layer."""
        keys = self.key_cache[layer_idx] if 0 <= layer_idx < len(self.kinds) else None
        if keys is None:
            return None
        return keys, self.value_cache[layer_idx], self._lens[keys.device]

    def advance(self) -> None:
        """After a step: the next position (on every device holding K/V too)."""
        self.position.add_(1)
        for t in self._lens.values():
            t.add_(1)

    def sync_positions(self) -> None:
        """Mirror the write position onto every other device holding K/V (device_map across devices)."""
        for t in self._positions.values():
            if t is not self.position:
                t.copy_(self.position)

    def fits(self, like: list[LayerState], batch: int, max_len: int) -> bool:
        if batch != self.batch or max_len > self.max_len or len(like) != len(self.kinds):
            return False
        for i, s in enumerate(like):
            if s.kind != self.kinds[i]:
                return False
            a = self.key_cache[i] if s.kind == "attention" else self._conv[i]
            b = self.value_cache[i] if s.kind == "attention" else self._rec[i]
            if s.kind == "attention":
                same = a.shape[1] == s.a.shape[1] and a.shape[3] == s.a.shape[3] and b.shape[3] == s.b.shape[3]
            else:
                same = a.shape[1:] == s.a.shape[1:] and b.shape[1:] == s.b.shape[1:]
            if not same or a.dtype != s.a.dtype or b.dtype != s.b.dtype or a.device != s.a.device:
                return False
        return True

    @torch.no_grad()
    def load(self, states: list[LayerState], kv_len: int) -> None:
        """Copy a prefill's state in (K/V into positions [0, kv_len), the rest zeroed) and set the position."""
        if kv_len >= self.max_len:
            raise ValueError(f"interns2_fast static decode: prompt of {kv_len} positions does not fit a cache of "
                             f"{self.max_len}")
        for i, s in enumerate(states):
            if s.kind == "attention":
                for buf, src in ((self.key_cache[i], s.a), (self.value_cache[i], s.b)):
                    buf[:, :, :kv_len].copy_(src)
                    buf[:, :, kv_len:].zero_()
            else:
                self._conv[i].copy_(s.a)
                self._rec[i].copy_(s.b)
        self.position.fill_(kv_len)
        for t in self._lens.values():
            t.fill_(kv_len + 1)
        self.sync_positions()

    @torch.no_grad()
    def export_to(self, cache, kv_len: int) -> bool:
        """Write the decoded state (K/V positions [0, kv_len)) back into a transformers cache object of the
        same model; returns False for a layout this code does not know (the cache is then left as it was)."""
        protocol = cache_protocol(cache)
        if protocol is None:
            return False
        for i, kind in enumerate(self.kinds):
            if kind == "attention":
                k = self.key_cache[i][:, :, :kv_len].clone()
                v = self.value_cache[i][:, :, :kv_len].clone()
                if protocol == "legacy":
                    cache.key_cache[i], cache.value_cache[i] = k, v
                else:
                    layer = cache.layers[i]
                    if not (hasattr(layer, "keys") and hasattr(layer, "values")):
                        return False
                    layer.keys, layer.values = k, v
            elif protocol == "legacy":
                cache.conv_states[i], cache.recurrent_states[i] = self._conv[i].clone(), self._rec[i].clone()
            else:
                conv, rec, _ = linear_states(cache, i)
                if conv is None or rec is None:
                    return False
                conv.copy_(self._conv[i])
                rec.copy_(self._rec[i])
                # 5.25's linear layers count their tokens (what get_seq_length reads on a hybrid cache)
                count = getattr(cache.layers[i], "cumulative_length_linear", None)
                if isinstance(count, torch.Tensor):
                    count.fill_(kv_len)
        try:
            return int(cache.get_seq_length()) == kv_len
        except Exception:  # noqa: BLE001  (a cache that cannot tell its length is not handed back)
            return False

    # --- legacy protocol (transformers 5.2 - 5.14, Intern-S2-Preview remote code) -------------------
    def __len__(self) -> int:
        return len(self.kinds)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write one step's K/V at `position`; return the whole static K/V (read under the step's mask)."""
        keys, values = self.key_cache[layer_idx], self.value_cache[layer_idx]
        pos = self._positions.get(keys.device, self.position)
        keys.index_copy_(2, pos, key_states.to(keys.dtype))
        values.index_copy_(2, pos, value_states.to(values.dtype))
        return keys, values

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.max_len

    # --- layered protocol (transformers 5.15+) ---------------------------------------------------
    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        return self._conv[layer_idx]

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        return self._rec[layer_idx]

    def update_recurrent_state(self, recurrent_states, layer_idx: int, state_idx: int = 0, **kwargs):
        current = self._rec[layer_idx]
        if recurrent_states is not current:
            current.copy_(recurrent_states)
        return current

    def update_conv_state(self, conv_states, layer_idx: int, state_idx: int = 0, **kwargs):
        raise NotImplementedError("interns2_fast static decode cache: only single-token decode steps run on it "
                                  "(a multi-token call reached update_conv_state)")

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    # --- 5.25: the layer counts tokens through the cache and may ask for intermediate states ---------
    def increase_count(self, layer_idx: int, state_idx: int = 0) -> None:
        """5.25's conv helper counts each in-place decode token here; the step keeps its own position."""

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        """No intermediate recurrent states: the static cache never records the past (no `crop`)."""
        return 0

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        """The layered form (a method); a cache built for a legacy-protocol model shadows it with `True`."""
        return True
