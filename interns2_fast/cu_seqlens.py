"""The packed-sequence offsets contract (a leaf module: the ops and the backends that read
cu_seqlens back to the host check it with the same function)."""
from __future__ import annotations

from typing import Sequence


def check_cu_seqlens_values(op: str, bounds: Sequence[int], total: int) -> None:
    """Packed-sequence offsets: bounds[0] == 0, non-decreasing, bounds[-1] == total (the token count)."""
    if bounds[0] != 0:
        raise ValueError(f"{op}: cu_seqlens must start at 0, got {bounds[0]}")
    for i in range(1, len(bounds)):
        if bounds[i] < bounds[i - 1]:
            raise ValueError(f"{op}: cu_seqlens must be non-decreasing, got {bounds[i - 1]} then {bounds[i]} "
                             f"at positions {i - 1}, {i}")
    if bounds[-1] != total:
        raise ValueError(f"{op}: cu_seqlens must end at the number of tokens T = {total}, got {bounds[-1]}")
