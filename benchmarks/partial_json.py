"""pytest plugin: pytest-benchmark JSON rewritten after every finished test, so that a run cut short
(a time cap, a killed command) still leaves the cases that completed.

    INTERNS2_BENCH_PARTIAL_JSON=part.json PYTHONPATH=benchmarks pytest benchmarks/ops -p partial_json ...

pytest-benchmark writes `--benchmark-json` only at the end of the session, and on an interrupt its
session end can fail on the case in progress (no rounds yet: "min() arg is an empty sequence"), so
nothing is written. The file this plugin writes has pytest-benchmark's format (`benchmarks` entries
with `stats` and `extra_info`, without per-round data) plus `"partial": true`; scripts/gpu_bench.py
uses it when the final JSON is missing.
"""
from __future__ import annotations

import json
import os
import pathlib

_ENV = "INTERNS2_BENCH_PARTIAL_JSON"
_cache: dict = {}


def _finished(bench) -> bool:
    stats = getattr(bench, "stats", None)
    data = getattr(getattr(stats, "stats", None), "data", None)
    return not getattr(bench, "has_error", False) and bool(data)


def write_partial(config, path) -> int:
    """Write the finished benchmarks of this session to `path`; returns how many."""
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return 0
    done = [b for b in session.benchmarks if _finished(b)]
    if "machine_info" not in _cache:
        try:
            _cache["machine_info"] = session.get_machine_info()
        except Exception:  # noqa: BLE001  (a report of what ran matters more than machine details)
            _cache["machine_info"] = {}
    out = {"partial": True, "machine_info": _cache["machine_info"], "commit_info": {},
           "benchmarks": [b.as_dict(include_data=False) for b in done]}
    tmp = pathlib.Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    os.replace(tmp, path)  # never a half-written file
    return len(done)


def pytest_runtest_logfinish(nodeid, location):
    path = os.environ.get(_ENV)
    config = _cache.get("config")
    if path and config is not None:
        write_partial(config, path)


def pytest_configure(config):
    _cache["config"] = config
