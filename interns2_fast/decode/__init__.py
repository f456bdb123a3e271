"""Static decode: preallocated caches, a fixed-address decode step, device-graph replay, behind
`model.generate()` (issue 11).

* `static_cache.StaticDecodeCache` — per-layer K/V, conv and recurrent states allocated once;
  speaks the legacy (5.2, Intern-S2 remote code) and layered (5.15+) cache protocols.
* `step.DecodeStep` — one token through every layer, reading and writing only static buffers.
* `graph` — the runners: CUDA / Ascend graph capture + replay (one code path), eager, compile.
* `generate` — `install(model, mode)` / `uninstall(model)`: `generate()` (greedy, sampling) through
  the static step; `patch(model, static_decode=...)` calls these.
"""
from .generate import (DecodeSettings, install, runtime_for, settings_of, static_sample, transformers_loop,
                       uninstall)
from .graph import MODES, CompiledRunner, EagerRunner, GraphRunner, graph_api, make_runner
from .static_cache import StaticDecodeCache, UnsupportedCache, read_cache_states
from .step import DecodeStep, find_parts

__all__ = ["DecodeSettings", "install", "uninstall", "transformers_loop", "settings_of", "runtime_for", "static_sample", "MODES",
           "CompiledRunner", "EagerRunner", "GraphRunner", "graph_api", "make_runner", "StaticDecodeCache",
           "UnsupportedCache", "read_cache_states", "DecodeStep", "find_parts"]
