"""No host synchronisation in a patched layer's single-token (decode) path, torch backend.

Two detectors, both shown to catch a deliberate `.item()`:
  * torch.profiler: the aten events that read a device value back to the host
    (`numerics.HOST_SYNC_EVENTS`: item, _local_scalar_dense, nonzero, is_nonzero, unique, ...);
  * the meta device: the step runs with every weight, state and input on "meta", where reading a
    value (`.item()`, `.tolist()`, `nonzero`, a data-dependent shape) raises. It also exercises the
    accelerator branches of the torch backend (a meta tensor is not a CPU tensor), i.e. the path an
    NPU runs, and catches `.tolist()` / `.cpu()` reads that the CPU profiler cannot see.
The decode step is every patched linear-attention layer and every MoE block (router included) of a
tiny model, with the cache a real prefill left behind.
"""
import copy
import inspect

import pytest
import torch

from interns2_fast import models, numerics, ops
from interns2_fast.ops._registry import Backend
from interns2_fast.patching import patch, reference_mode, unpatch


def _to_meta(obj, depth=0, seen=None):
    """Move every tensor reachable from a transformers cache object to the meta device (in place)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return obj
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.to("meta")
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            obj[i] = _to_meta(x, depth + 1, seen)
    elif isinstance(obj, dict):
        for key, x in list(obj.items()):
            obj[key] = _to_meta(x, depth + 1, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)) \
            and type(obj).__module__.startswith("transformers"):
        for key, x in list(vars(obj).items()):
            setattr(obj, key, _to_meta(x, depth + 1, seen))
    return obj


@pytest.fixture(scope="module", params=["qwen3_5_moe", "qwen3_next"])
def decode_setup(request):
    """(model, cache after a 9-token prefill, a decode-step callable factory) on CPU."""
    model = models.build_causal_lm(request.param)
    patch(model, backend="torch")
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return model, cache


def _decode_step(model, cache, device):
    layer0 = next(layer for layer in model.model.layers if hasattr(layer, "linear_attn"))
    params = inspect.signature(type(layer0.linear_attn).forward).parameters
    kw = {"cache" if "cache" in params else "cache_params": cache}
    if "cache_position" in params:
        kw["cache_position"] = torch.tensor([9], device=device)
    h = torch.randn(2, 1, model.config.hidden_size, device=device)

    def step():
        with torch.no_grad():
            outs = []
            for layer in model.model.layers:
                if hasattr(layer, "linear_attn"):
                    outs.append(layer.linear_attn(h, **kw))
                outs.append(layer.mlp(h))
            return outs

    return step


def _meta_copy(model, cache):
    unpatch(model)
    meta_model = copy.deepcopy(model).to("meta")
    patch(model, backend="torch")
    return meta_model, _to_meta(copy.deepcopy(cache))


def test_patched_decode_step_has_no_host_sync_on_meta(decode_setup):
    model, cache = decode_setup
    meta_model, meta_cache = _meta_copy(model, cache)
    report = patch(meta_model, backend="torch")
    assert {p.backend for p in report.patched} == {"torch"}
    syncs, outs = numerics.count_host_syncs(_decode_step(meta_model, meta_cache, "meta"))
    assert syncs == {}
    assert all(o.shape == (2, 1, model.config.hidden_size) for o in outs)
    # the unpatched (transformers) path cannot even run there: its expert loop reads `nonzero` back
    with reference_mode(meta_model), pytest.raises((RuntimeError, NotImplementedError)):
        _decode_step(meta_model, meta_cache, "meta")()


def test_patched_gdn_and_router_decode_have_no_sync_events_on_cpu(decode_setup):
    model, cache = decode_setup
    step = _decode_step(model, copy.deepcopy(cache), "cpu")
    layer = next(layer for layer in model.model.layers if hasattr(layer, "linear_attn"))
    h = torch.randn(2, 1, model.config.hidden_size)
    syncs, _ = numerics.count_host_syncs(lambda: layer.mlp.gate(h.view(2, -1)))
    assert syncs == {}
    # the whole step on the CPU: the GDN layers add nothing; the reference path syncs per hit expert
    patched, _ = numerics.count_host_syncs(step)
    with reference_mode(model):
        reference, _ = numerics.count_host_syncs(step)
    assert reference.get("aten::item", 0) + reference.get("aten::nonzero", 0) > 0
    assert patched.get("aten::item", 0) == patched.get("aten::nonzero", 0) == 0


def test_detectors_catch_a_deliberate_item(decode_setup, monkeypatch):
    model, cache = decode_setup
    impl = ops.OPS["rms_norm_gated"].backends["torch"].impl

    def syncing_norm(x, gate, weight, eps):
        if x.device.type != "meta":
            float(x.abs().max().item())
        else:
            x.abs().max().item()
        return impl(x, gate, weight, eps)

    monkeypatch.setitem(ops.OPS["rms_norm_gated"].backends, "torch", Backend("torch", syncing_norm))
    syncs, _ = numerics.count_host_syncs(_decode_step(model, copy.deepcopy(cache), "cpu"))
    assert syncs.get("aten::item", 0) >= 1
    from interns2_fast.ops import _registry

    if _registry.META_RUNS_BACKENDS:  # this torch runs the backend itself on meta tensors (2.13 does; 2.9 not)
        meta_model, meta_cache = _meta_copy(model, cache)
        patch(meta_model, backend="torch")
        with pytest.raises((RuntimeError, NotImplementedError)):
            _decode_step(meta_model, meta_cache, "meta")()
    assert "torch" in ops.registered("rms_norm_gated")
