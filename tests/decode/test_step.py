"""The static decode step itself: fixed addresses, no host sync (meta device), torch.compile
fullgraph, the device-graph runner's code path (driven on the CPU by a stand-in graph API), both
cache protocols, and unpatched layers on the static cache."""
import contextlib
import copy
import sys
import types

import pytest
import torch

from interns2_fast import models, patch
from interns2_fast.decode import graph as dec_graph
from interns2_fast.decode import settings_of
from interns2_fast.decode.static_cache import LayerState, StaticDecodeCache, read_cache_states
from interns2_fast.decode.step import DecodeStep, find_parts
from interns2_fast.host_sync import count_host_syncs
from interns2_fast.patching import reference_mode
from interns2_fast.patching.caches import cache_protocol

def prefill(model, batch=2, length=7):
    ids = torch.randint(1, model.config.vocab_size, (batch, length))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache
    return ids, out.logits, cache


def build_step(model, cache, batch, max_len=32, device="cpu"):
    parts = find_parts(model)
    states = read_cache_states(cache, parts.kinds)
    static = StaticDecodeCache(states, batch, max_len, torch.zeros(1, dtype=torch.long, device=device),
                               cache_protocol(cache))
    step = DecodeStep(parts, static, vocab_size=model.config.vocab_size, dtype=torch.float32, device=device)
    kv_len = next(s.a.shape[2] for s in states if s.kind == "attention")
    step.load(states, kv_len, None, torch.full((batch, 1), kv_len, device=device))
    return step, states, kv_len


@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next", "interns2_remote"])
def test_every_static_buffer_keeps_its_address_across_20_steps(model_factory, family):
    model = model_factory(family)
    patch(model)
    B, L = 3, 6
    ids = torch.randint(1, 512, (B, L))
    steps = []
    handle = find_parts(model).layers[-1].register_forward_hook(_ptr_recorder(model, steps), with_kwargs=True)
    try:
        model.generate(ids, max_new_tokens=21, do_sample=False)  # prefill + 20 static steps
    finally:
        handle.remove()
    rt = settings_of(model).last_runtime()
    assert len(steps) == 20  # the 20 decode steps (the prefill runs before the static buffers exist)
    assert all(s == steps[0] for s in steps)
    names = set(steps[0])
    assert {"input_ids", "position_ids", "mask", "logits", "cache.position"} <= names
    assert any(n.startswith("cache.key.") for n in names) and any(n.startswith("cache.recurrent.") for n in names)
    # and they are the live state: 20 steps advanced the position and wrote K/V there
    assert int(rt.step.cache.position) == L + 20
    k = next(v for n, v in rt.step.buffers().items() if n.startswith("cache.key."))
    assert k[:, :, L:L + 20].abs().sum(dim=(1, 3)).gt(0).all() and k[:, :, L + 20:].abs().sum() == 0


def _ptr_recorder(model, out):
    """A forward hook recording the static buffers' addresses on each static-step call of a layer (not on the
    prefill, nor on the model's own forward that checks a new runtime's first step)."""
    def hook(module, args, kwargs, output):
        rt = settings_of(model).last_runtime()
        if rt is not None and any(v is rt.step.cache for v in kwargs.values()):
            out.append({k: v.data_ptr() for k, v in rt.step.buffers().items()})

    return hook


def test_decode_step_on_meta_has_no_host_sync(model_factory, monkeypatch):
    model = model_factory("qwen3_5_moe")
    ids, _, cache = prefill(model, batch=2)
    meta_model = copy.deepcopy(model).to("meta")
    patch(meta_model, backend="torch")
    parts = find_parts(meta_model)
    # transformers 5.2's rotary asks autocast (disabled) about the "meta" device type, which autocast
    # does not know: that context is a no-op here, make it one
    home = sys.modules[type(parts.rotary).__module__]
    if hasattr(home, "maybe_autocast"):
        monkeypatch.setattr(home, "maybe_autocast", lambda *a, **k: contextlib.nullcontext())
    states = [LayerState(s.kind, s.a.to("meta"), s.b.to("meta")) for s in read_cache_states(cache, parts.kinds)]
    static = StaticDecodeCache(states, 2, 32, torch.zeros(1, dtype=torch.long, device="meta"), cache_protocol(cache))
    step = DecodeStep(parts, static, vocab_size=model.config.vocab_size, dtype=torch.float32,
                      device=torch.device("meta"))
    syncs, logits = count_host_syncs(step)
    assert syncs == {}
    assert logits.device.type == "meta" and logits.shape == (2, model.config.vocab_size)
    # the detector is live: the unpatched MoE's expert loop reads `nonzero` back, which meta cannot do
    with reference_mode(meta_model), pytest.raises((RuntimeError, NotImplementedError)):
        step()


def test_decode_step_host_sync_events_on_cpu(model_factory):
    model = model_factory("qwen3_5_moe")
    patch(model)
    _, _, cache = prefill(model)
    step, _, _ = build_step(model, cache, 2)
    syncs, _ = count_host_syncs(step)
    # the CPU torch MoE path reads its group sizes from host memory (bincount + tolist, not a device
    # sync on the CPU); nothing else in the step reads back
    assert set(syncs) <= {"aten::bincount"}, syncs


def test_static_step_matches_the_model_forward(model_factory):
    """One static step == the model's own cached forward for the next token (same cache state)."""
    model = model_factory("qwen3_5_moe")
    patch(model)
    ids, _, cache = prefill(model, batch=2, length=7)
    ref_cache = copy.deepcopy(cache)
    step, _, kv_len = build_step(model, cache, 2)
    nxt = torch.randint(1, 512, (2, 1))
    step.input_ids.copy_(nxt)
    step()
    with torch.no_grad():
        out = model(nxt, past_key_values=ref_cache, use_cache=True, cache_position=torch.tensor([kv_len]),
                    position_ids=torch.full((2, 1), kv_len))
    torch.testing.assert_close(step.logits, out.logits[:, -1].float(), rtol=1e-5, atol=1e-5)
    assert int(step.cache.position) == kv_len + 1 and step.position_ids.eq(kv_len + 1).all()


def test_step_compiles_with_fullgraph():
    from interns2_fast.patching.state import FAMILIES

    # its own model, not the shared tiny one: the router-logits call below leaves transformers' capture
    # hooks on the routers for good (the patched MoE block then calls the hooked router module)
    model = models.build_causal_lm("qwen3_5_moe", dtype=torch.float32)
    # the "rmsnorm" family's residual hand-over between layers (patching/decoder.py) checks tensor
    # identity and `_version`, which Dynamo cannot trace as one graph yet: left out of this proof
    patch(model, ops=tuple(f for f in FAMILIES if f != "rmsnorm"))
    # a call that records router logits first: transformers (5.x) then keeps forward hooks on the routers
    # that read a context variable (Dynamo cannot trace ContextVar.get), which the step must switch off
    with torch.no_grad():
        model(torch.randint(1, 512, (1, 4)), output_router_logits=True)
    _, _, cache = prefill(model)
    step, states, kv_len = build_step(model, cache, 2)
    nxt = torch.randint(1, 512, (2, 1))
    step.input_ids.copy_(nxt)
    eager = step().clone()
    step.load(states, kv_len, None, torch.full((2, 1), kv_len))
    torch._dynamo.reset()
    # aot_eager: Dynamo's whole-graph capture plus AOT functionalization of the in-place custom ops
    # (what inductor and cudagraphs build on); inductor itself works too but takes minutes on 2 cores
    compiled = torch.compile(step.__call__, fullgraph=True, dynamic=False, backend="aot_eager")
    got = compiled().clone()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    assert int(step.cache.position) == kv_len + 1  # the compiled step advanced the device position


def stub_graph_api():
    """A stand-in for torch.cuda / torch.npu's graph API: 'capture' records the callable run inside
    `graph(g)`, 'replay' runs it. GraphRunner makes exactly the calls it makes on CUDA / Ascend."""
    calls = []
    capturing = {}

    class Graph:
        def __init__(self):
            self.fn = None

        def replay(self):
            calls.append("replay")
            self.fn()

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            calls.append("wait_stream")

    @contextlib.contextmanager
    def graph(g):
        calls.append("capture")
        capturing["g"] = g
        yield
        capturing.pop("g")

    mod = types.SimpleNamespace(Stream=Stream, stream=lambda s: contextlib.nullcontext(), current_stream=Stream,
                                graph=graph, synchronize=lambda: calls.append("synchronize"))
    return mod, Graph, calls, capturing


def test_graph_runner_code_path_gives_the_same_tokens(model_factory, monkeypatch):
    model = model_factory("qwen3_5_moe")
    mod, graph_cls, calls, capturing = stub_graph_api()

    # what runs inside `graph(g)` becomes g's replay (a real graph records it; the stand-in keeps the callable)
    real_prepare = dec_graph.GraphRunner.prepare

    def prepare(self):
        step = self.step

        def traced():
            if "g" in capturing:
                capturing["g"].fn = step
            step()

        self.step = traced
        try:
            real_prepare(self)
        finally:
            self.step = step

    monkeypatch.setattr(dec_graph, "graph_api", lambda device: (mod, graph_cls))
    monkeypatch.setattr(dec_graph.GraphRunner, "prepare", prepare)
    ids = torch.randint(1, 512, (3, 8))
    patch(model, static_decode=False)
    want = model.generate(ids, max_new_tokens=10, do_sample=False)
    patch(model)  # "auto" picks the graph runner where a graph API exists
    got = model.generate(ids, max_new_tokens=10, do_sample=False)
    rt = settings_of(model).last_runtime()
    assert rt.runner.kind == "graph"
    assert calls[:3] == ["wait_stream", "wait_stream", "capture"] and calls[3] == "synchronize"
    assert calls.count("replay") == 9
    assert torch.equal(got, want)


def test_failed_capture_falls_back_to_eager(model_factory, monkeypatch):
    model = model_factory("qwen3_5_moe")
    mod, graph_cls, calls, _ = stub_graph_api()

    def broken(g):
        raise RuntimeError("operation not permitted when stream is capturing")

    mod.graph = broken
    monkeypatch.setattr(dec_graph, "graph_api", lambda device: (mod, graph_cls))
    dec_graph._NOTED.clear()
    patch(model, static_decode="graph")
    ids = torch.randint(1, 512, (1, 8))
    got = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert settings_of(model).last_runtime().runner.kind == "eager"
    patch(model, static_decode=False)
    assert torch.equal(got, model.generate(ids, max_new_tokens=5, do_sample=False))


@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next"])
def test_unpatched_layers_run_on_the_static_cache(model_factory, family):
    """Only the norm patched: the transformers GDN fallback assigns a new recurrent state each step
    (5.2) or calls update_recurrent_state (5.15+); the static cache copies it in place."""
    model = model_factory(family)
    ids = torch.randint(1, 512, (2, 8))
    want = model.generate(ids, max_new_tokens=8, do_sample=False)
    patch(model, ops=("norm",))
    ptrs = []
    handle = find_parts(model).layers[0].register_forward_hook(_ptr_recorder(model, ptrs), with_kwargs=True)
    try:
        got = model.generate(ids, max_new_tokens=8, do_sample=False)
    finally:
        handle.remove()
    assert settings_of(model).stats["static"] == 1
    assert torch.equal(got, want)
    assert len(ptrs) == 7 and all(p == ptrs[0] for p in ptrs)


def test_cache_protocols_copy_in_place():
    like = [LayerState("linear", torch.zeros(1, 6, 4), torch.zeros(1, 2, 3, 3)),
            LayerState("attention", torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))]
    pos = torch.tensor([5])
    c = StaticDecodeCache(like, 2, 16, pos)
    rec = c.recurrent_states[0]
    new = torch.randn(2, 2, 3, 3)
    c.recurrent_states[0] = new  # legacy assignment: a copy into the static tensor
    assert c.recurrent_states[0] is rec and torch.equal(rec, new)
    newer = torch.randn(2, 2, 3, 3)
    assert c.update_recurrent_state(newer, 0) is rec and torch.equal(rec, newer)  # layered
    assert c.get_conv_state(0) is c.conv_states[0] and c.get_recurrent_state(0) is rec
    assert c.has_previous_state and not c.is_recording_past(0)
    k, v = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    keys, values = c.update(k, v, 1)
    assert keys is c.key_cache[1] and keys.shape == (2, 2, 16, 8)
    assert torch.equal(keys[:, :, 5:6], k) and keys[:, :, :5].abs().sum() == 0 and keys[:, :, 6:].abs().sum() == 0
    with pytest.raises(NotImplementedError, match="single-token"):
        c.update_conv_state(torch.zeros(2, 6, 3), 0)
    with pytest.raises(ValueError, match="does not fit"):
        c.load([LayerState("linear", torch.zeros(2, 6, 4), torch.zeros(2, 2, 3, 3)),
                LayerState("attention", torch.zeros(2, 2, 16, 8), torch.zeros(2, 2, 16, 8))], 16)
