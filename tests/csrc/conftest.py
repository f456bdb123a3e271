"""Fixtures of the csrc/ tests: the PTO simulator extension, built once per session if it can be.

INTERNS2_PTO_REQUIRED=1 (set by .ci/run) turns "cannot be built here" from a skip into a failure.
"""
import os

import pytest


@pytest.fixture(scope="session")
def pto_sim():
    """The `_pto_sim` module, built (or found up to date) here; the test is skipped with the reason
    when no clang++ >= 15 or no PTO-ISA headers exist on this machine."""
    from interns2_fast import pto

    builder = pto._builder()
    if builder is None:
        pytest.skip("no csrc/ in this install")
    try:
        builder.build_sim(quiet=True)
    except builder.Unavailable as exc:
        if os.environ.get("INTERNS2_PTO_REQUIRED", "0") not in ("", "0"):
            pytest.fail(f"INTERNS2_PTO_REQUIRED is set but the PTO simulator extension cannot be built: {exc}")
        pytest.skip(f"PTO simulator extension cannot be built here: {exc}")
    return pto._load_sim()
