"""Runners for the static decode step: device-graph replay (CUDA and Ascend, one code path), eager,
or `torch.compile`.

`GraphRunner` captures the step once (after warm-up runs on a side stream, as both graph APIs
require) and replays it per token. CUDA and Ascend share every line: `graph_api(device)` returns
`torch.cuda` or `torch.npu` (torch_npu mirrors the CUDA API: `Stream`, `stream`, `current_stream`,
`graph`, `synchronize`) and the graph class (`torch.cuda.CUDAGraph` / `torch.npu.NPUGraph`). The
warm-up runs write garbage into the static buffers; callers load the real state after `prepare()`.
On the CPU the same step and buffers run through `EagerRunner` (or `CompiledRunner`).
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger("interns2_fast")

MODES = ("auto", "graph", "eager", "compile")
_NOTED: set = set()


def note_once(message: str) -> None:
    """Log `message` once per process (warning level: it says a faster path was not taken)."""
    if message not in _NOTED:
        _NOTED.add(message)
        logger.warning("interns2_fast: %s", message)


def graph_api(device: torch.device):
    """(module, graph class) of the device-graph API for `device`, or None where there is none."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda, torch.cuda.CUDAGraph
    if device.type == "npu":
        mod = getattr(torch, "npu", None)
        cls = getattr(mod, "NPUGraph", None)
        if mod is not None and cls is not None and hasattr(mod, "graph"):
            return mod, cls
    return None


class EagerRunner:
    kind = "eager"

    def __init__(self, step):
        self.step = step

    def prepare(self) -> None:
        pass

    def run(self) -> None:
        self.step()


class CompiledRunner:
    """`torch.compile(step)`; `fullgraph=True` is what the tests prove possible."""

    kind = "compile"

    def __init__(self, step, *, fullgraph: bool = False):
        self.step = step
        self.fn = torch.compile(step.__call__, fullgraph=fullgraph, dynamic=False)

    def prepare(self) -> None:
        self.fn()  # compile now (garbage in the buffers; the caller loads the real state next)

    def run(self) -> None:
        self.fn()


class GraphRunner:
    """Capture `step` once into a device graph (CUDA or Ascend) and replay it."""

    kind = "graph"

    def __init__(self, step, device: torch.device, *, api=None, warmup: int = 2):
        found = api if api is not None else graph_api(device)
        if found is None:
            raise RuntimeError(f"interns2_fast: no device-graph API for {device}")
        self.mod, self.graph_cls = found
        self.step = step
        self.device = device
        self.warmup = warmup
        self.graph = None

    def prepare(self) -> None:
        mod = self.mod
        side = mod.Stream(device=self.device) if self.device.index is not None else mod.Stream()
        side.wait_stream(mod.current_stream())
        with mod.stream(side):
            for _ in range(self.warmup):
                self.step()
        mod.current_stream().wait_stream(side)
        graph = self.graph_cls()
        with mod.graph(graph):
            self.step()
        mod.synchronize()
        self.graph = graph

    def run(self) -> None:
        self.graph.replay()


def choose_mode(mode: str, devices: set[torch.device]) -> str:
    """The runner kind for `mode` on a model whose parameters live on `devices`."""
    single = len(devices) == 1
    dev = next(iter(devices)) if single else None
    if mode == "auto":
        return "graph" if single and graph_api(dev) is not None else "eager"
    if mode == "graph" and not (single and graph_api(dev) is not None):
        note_once("static_decode='graph' needs the model on one CUDA or Ascend device; running the static step "
                  "eagerly")
        return "eager"
    return mode


def make_runner(step, kind: str, device: torch.device, *, api=None):
    """A prepared runner of `kind`; a failed capture or compile falls back to the eager runner (noted once)."""
    if kind == "eager":
        return EagerRunner(step)
    try:
        runner = GraphRunner(step, device, api=api) if kind == "graph" else CompiledRunner(step)
        runner.prepare()
        return runner
    except Exception as exc:  # noqa: BLE001  (a capture or compile that fails must not break generate())
        first_line = (str(exc).splitlines() or [""])[0][:200]
        note_once(f"static decode: {kind} runner unavailable ({type(exc).__name__}: {first_line}); "
                  "running the static step eagerly")
        return EagerRunner(step)

