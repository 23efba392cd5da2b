"""Expected arrivals as a bidder for the capacity ahead (issue 17 item 6).

A car park's planner sees only the cars plugged in now. Taking capacity away from them for the
cars expected later (a hard reservation) wastes it when those cars do not come; ignoring them
plans the evening as if it were the present cars' alone. Here the expected load
(``forecast.arrivals.expected_load_a``) bids for the capacity of every block after the first at
``EXPECTED_VALUE`` per Wh it would take: a present car's Wh (worth at least 1) always outbids it,
except where the trade is uneven. An ampere of a short phase gives a three-phase car three times
the energy it gives a single-phase one, so on a phase the expected three-phase cars will want, a
present single-phase car's Wh (1) loses to the 3 x ``EXPECTED_VALUE`` the same ampere is worth to
them, and a present three-phase car charges now rather than in the capacity they will need. The
protected share (``balancer.plan_model``, worth 3.5 per Wh on one phase) still outbids it.

The bids are columns on the connection's node rows only (never real current: the plan's limits
and the minimum-current step read the car columns alone), one three-phase column per block for
what the expected load has on every phase, and one per phase for the rest (expected single-phase
cars).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from balancer.plan_types import FloatArray, LpModel

__all__ = ["EXPECTED_VALUE", "add_expected"]

EXPECTED_VALUE = 0.95
"""What a Wh of an expected (not yet arrived) car is worth against 1 for a present car's: below 1,
so a present car always comes first on equal terms; some expected cars do not come."""


def add_expected(model: LpModel, expected_a: FloatArray, voltage_v: float, slot_s: int,
                 value: float | None = None) -> LpModel:
    """``model`` with bids of ``expected_a`` (n_slots, 3) [A] per slot and phase on the connection
    rows of every block but the first (module docstring); unchanged when nothing is expected."""
    value = EXPECTED_VALUE if value is None else value
    expected = np.maximum(np.nan_to_num(np.asarray(expected_a, dtype=np.float64)), 0.0)
    first_slot = np.flatnonzero(np.diff(model.slot_block, prepend=-1))
    n_blocks = len(first_slot)
    if n_blocks < 2 or not np.any(expected[first_slot[1]:] > 0):
        return model
    per_block = np.minimum.reduceat(expected, first_slot, axis=0)  # (n_blocks, 3): held in every slot
    slots_in = np.bincount(model.slot_block, minlength=n_blocks).astype(np.float64)
    root = np.flatnonzero(model.cap_node == 0)
    row = np.full((n_blocks, 3), -1, dtype=np.int64)
    row[model.cap_slot[root], model.cap_phase[root]] = root
    rows, cols, hi, cost = [], [], [], []
    j = model.a.shape[1]
    wh_per_a = voltage_v * slots_in * slot_s / 3600.0  # one phase, one ampere, the whole block
    for b in range(1, n_blocks):
        present = row[b] >= 0
        if not present.any():
            continue  # no car here loads the connection then: nothing to outbid
        both = float(per_block[b].min())
        if both > 0:  # expected three-phase load: one column on every phase row of the block
            rows += row[b, present].tolist()
            cols += [j] * int(present.sum())
            hi.append(both)
            cost.append(value * 3 * wh_per_a[b] / 1000.0)
            j += 1
        for p in np.flatnonzero(present & (per_block[b] - both > 1e-9)).tolist():
            rows.append(int(row[b, p]))
            cols.append(j)
            hi.append(float(per_block[b, p] - both))
            cost.append(value * wh_per_a[b] / 1000.0)
            j += 1
    n_new = j - model.a.shape[1]
    if n_new == 0:
        return model
    extra = sp.csc_matrix((-np.ones(len(rows)), (rows, np.asarray(cols) - model.a.shape[1])),
                          shape=(model.a.shape[0], n_new))
    return replace(model, a=sp.hstack([model.a, extra]).tocsc(),
                   col_lo=np.concatenate([model.col_lo, np.zeros(n_new)]),
                   col_hi=np.concatenate([model.col_hi, np.asarray(hi)]),
                   cost=np.concatenate([model.cost, np.asarray(cost)]))
