"""The UB plans written beside the PTO kernels (csrc/*_ub.hpp), checked for the Intern-S2 shapes.

The CPU simulator gives every tile its own array, so it never sees UB addresses: without this test
nothing would notice an overlap, a misaligned tile or a plan past the 192 KB Unified Buffer of an
A2/A3 vector core. Checked here, from the header text alone (no compiler needed):
  * every slot 32-byte aligned, slots pairwise disjoint, all below PTO's own scratch
    [TMP_UB_OFFSET = 184 KiB, 192 KiB) (TROWEXPANDMUL with a column operand uses it);
  * every slot's size recomputed from the Intern-S2 shapes (K = V = 128, 32 value heads, the
    value-head width 128 of the norm) and the kernel's block sizes;
  * the kernel source places exactly the planned slots (pto_place<NAME_OFF, NAME_BYTES>), so the
    plan is the one the kernel uses; pto_place also static_asserts tile size == slot size.
The checker itself is shown to reject overlapping, misaligned and oversized plans.
"""
import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
UB_BYTES = 192 * 1024
PTO_SCRATCH = (184 * 1024, 192 * 1024)  # pto::TMP_UB_OFFSET, + TMP_UB_SIZE
F32 = 4

# Intern-S2 linear attention (interns2_fast/models.py / BRIEF): 16 key heads, 32 value heads, K = V = 128.
INTERN_S2 = dict(K=128, V=128, Hk=16, Hv=32, norm_width=128)


def parse_plan(text: str, macro: str) -> dict[str, tuple[int, int]]:
    body = text[text.index(f"#define {macro}(X)"):]
    body = body[: body.index("\n\n")] if "\n\n" in body else body
    slots = {}
    for name, off, size in re.findall(r"X\((\w+),\s*(0x[0-9a-fA-F]+|\d+),\s*(\d+)\)", body):
        assert name not in slots, f"{macro}: slot {name} twice"
        slots[name] = (int(off, 0), int(size))
    assert slots, f"no slots parsed from {macro}"
    return slots


def defines(text: str) -> dict[str, int]:
    return {k: int(v, 0) for k, v in re.findall(r"#define (I2F_\w+) (0x[0-9a-fA-F]+|\d+)\s*$", text, re.M)}


def check_plan(slots: dict[str, tuple[int, int]]) -> int:
    """Raise AssertionError on a bad plan; return the bytes used (end of the last slot)."""
    spans = sorted((off, off + size, name) for name, (off, size) in slots.items())
    for off, end, name in spans:
        assert off % 32 == 0, f"{name}: offset {off:#x} not 32-byte aligned"
        assert (end - off) % 32 == 0 and end > off, f"{name}: size {end - off} not a positive multiple of 32"
        assert end <= PTO_SCRATCH[0], f"{name}: ends at {end:#x}, inside PTO's scratch at {PTO_SCRATCH[0]:#x} or past UB"
    for (o1, e1, n1), (o2, e2, n2) in zip(spans, spans[1:]):
        assert e1 <= o2, f"{n1} [{o1:#x}, {e1:#x}) overlaps {n2} [{o2:#x}, {e2:#x})"
    return spans[-1][1]


def placed_slots(kernel_text: str) -> set[str]:
    return set(re.findall(r"pto_place<(\w+)_OFF, \1_BYTES>", kernel_text))


def test_gdn_decode_plan():
    text = (CSRC / "gdn_decode_ub.hpp").read_text()
    d = defines(text)
    K, V, BV, HV_MAX = d["I2F_GDN_DECODE_K"], d["I2F_GDN_DECODE_V"], d["I2F_GDN_DECODE_BV"], d["I2F_GDN_DECODE_HV_MAX"]
    assert (K, V) == (INTERN_S2["K"], INTERN_S2["V"])
    assert V % BV == 0 and HV_MAX >= INTERN_S2["Hv"] and INTERN_S2["Hv"] % INTERN_S2["Hk"] == 0
    slots = parse_plan(text, "I2F_GDN_DECODE_UB")
    expected = {
        "STATE0": K * BV, "STATE1": K * BV, "WORK": K * BV, "COLTMP": K // 2 * BV,
        "QROW": K, "KROW": K, "SQ": K, "ROWTMP": K, "QSUM": 8, "KSUM": 8,
        "VBLK0": BV, "VBLK1": BV, "OBLK0": BV, "OBLK1": BV, "KS": BV, "U": BV,
        "GA": HV_MAX, "GB": HV_MAX, "GT": HV_MAX, "ALOG": HV_MAX, "DTB": HV_MAX,
    }
    assert {n: s for n, (_, s) in slots.items()} == {n: e * F32 for n, e in expected.items()}
    used = check_plan(slots)
    assert used <= UB_BYTES - 8 * 1024
    assert placed_slots((CSRC / "gdn_decode.hpp").read_text()) == set(slots)


def test_norm_gated_plan():
    text = (CSRC / "norm_gated_ub.hpp").read_text()
    d = defines(text)
    N, R = d["I2F_NORM_GATED_N"], d["I2F_NORM_GATED_R"]
    assert N == INTERN_S2["norm_width"]
    slots = parse_plan(text, "I2F_NORM_GATED_UB")
    expected = {"X0": R * N, "X1": R * N, "G0": R * N, "G1": R * N, "O0": R * N, "O1": R * N,
                "WORK": R * N, "ROWTMP": R * N, "WEIGHT": N, "RSUM": R}
    assert {n: s for n, (_, s) in slots.items()} == {n: e * F32 for n, e in expected.items()}
    check_plan(slots)
    assert placed_slots((CSRC / "norm_gated.hpp").read_text()) == set(slots)


@pytest.mark.parametrize("bad, match", [
    ({"A": (0, 64), "B": (32, 64)}, "overlaps"),
    ({"A": (16, 64)}, "aligned"),
    ({"A": (0, 64), "B": (PTO_SCRATCH[0] - 32, 64)}, "scratch"),
    ({"A": (UB_BYTES, 32)}, "scratch"),
])
def test_checker_rejects_bad_plans(bad, match):
    with pytest.raises(AssertionError, match=match):
        check_plan(bad)
