"""What counts as a host synchronisation (a leaf module shared by `numerics` and `benchmarks/counts.py`).

On an accelerator, these ATen ops make the host wait for the device: a value is read back, or an
output's size depends on data. On the CPU they are recorded by the profiler all the same, which is
how the tests prove a decode step is sync-free.
"""
from __future__ import annotations

#: Host reads of a device scalar: a sync, and no compute.
SYNC_ONLY_OPS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero"})

#: Every op that makes the host wait for the device.
HOST_SYNC_EVENTS = SYNC_ONLY_OPS | frozenset({
    "aten::nonzero", "aten::argwhere", "aten::equal", "aten::allclose", "aten::_unique", "aten::_unique2",
    "aten::unique_dim", "aten::unique_consecutive", "aten::masked_select", "aten::_assert_async",
    "aten::bincount",
})


def count_host_syncs(fn, *args, **kwargs) -> tuple[dict[str, int], object]:
    """Run `fn(*args, **kwargs)` under torch.profiler (CPU activity) and count the `HOST_SYNC_EVENTS`
    it records. Returns ({event name: count}, fn's result)."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn(*args, **kwargs)
    counts = Counter(e.name for e in prof.events() if e.name in HOST_SYNC_EVENTS)
    return dict(counts), result
