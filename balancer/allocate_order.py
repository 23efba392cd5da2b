"""The allocator's orderings: one sort for the admission order, and its ties rotated per turn."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["rotate_ties", "stable_order"]


def stable_order(keys: tuple[npt.NDArray[Any], ...]) -> npt.NDArray[np.int64]:
    """``np.lexsort(keys)`` (the last key most significant, equals in index order), from one sort.

    Each key becomes its dense rank (an argsort, then counting where the sorted values change);
    ranks and index combine into one distinct int64 per charger, so an unstable sort is exact.
    A lexsort of 10,000 chargers with distinct urgencies takes about 1 ms, this under half of it.
    """
    n = len(keys[0])
    combined = np.zeros(n, dtype=np.int64)
    size = 1
    for key in reversed(keys):  # the most significant first
        if np.all(key == key[0]):  # one value throughout (no urgencies, say): no order
            continue
        if key.dtype == np.bool_:
            rank, distinct = key.astype(np.int64), 2
        else:
            by_value = np.argsort(key)
            ranked = key[by_value]
            rank = np.empty(n, dtype=np.int64)
            rank[by_value] = np.cumsum(np.concatenate([[0], ranked[1:] != ranked[:-1]]))
            distinct = int(rank[by_value[-1]]) + 1
        size *= distinct
        combined = combined * distinct + rank
    if size * n >= 2**63:  # too many distinct values to pack (and ``combined`` wrapped): key by key
        return np.lexsort(keys)
    if size == 1:
        return np.arange(n)
    return np.argsort(combined * n + np.arange(n))


def rotate_ties(order: npt.NDArray[np.int64], keys: tuple[npt.NDArray[Any], ...],
                 start: int) -> npt.NDArray[np.int64]:
    """``order``, a stable sort by ``keys``, with the ties broken by ``(index - start) % n``
    instead of the index: among equals, chargers from ``start`` on first, then those before it.

    Cheaper than sorting again (the urgency key alone makes a lexsort of 10,000 about 1 ms).
    """
    changes = np.zeros(len(order), dtype=bool)
    for key in keys:
        ranked = key[order]
        changes[1:] |= ranked[1:] != ranked[:-1]
    return order[np.lexsort((order < start, np.cumsum(changes)))]
