"""V2X in the planner's LP (DESIGN 3.9): a discharge variable per V2X session and decision block.

``add_discharge`` extends a model from ``balancer.plan.build_model`` (which it leaves alone) with:

- columns ``d[s, b] >= 0`` [A per phase], at most the car's and charger's discharge limit, only
  for V2X sessions, only in blocks where the connection has a *deficit* (non-EV load alone above
  the capacity in force) on a phase the car loads: discharge is for peak shaving, nothing else;
- the node rows: a fuse carries the discharge current like a charging one (``-d`` in the row of
  the charger's node, as ``x``), while at the connection it offsets the import (``+d`` there, or
  ``+2d`` for a charger below a circuit, whose circuit row already counted it once as load);
- the connection's flow column ``y[0, p, b]`` gets the raw capacity (negative in a deficit) as
  its upper bound, plus a slack ``u >= 0`` at a heavy cost where the deficit may be more than the
  cars can carry (so the LP stays feasible and says how much is uncovered);
- per phase and block, the discharge alone stays within the export room, whatever charges: no
  car charges on a phase with a deficit (as in the allocator), and no energy moves from one car
  to another through a phase without one (zeroing a current below its minimum afterwards can
  then never push the site past its export limit);
- the energy rows count discharge as energy taken back (the car's net energy is what it needs);
  a net below zero (the car leaves with less than it came with) is a column ``z >= 0`` that costs
  more than any energy is worth, rather than a bound that would force it to charge back in a
  slot where charging needs more discharge;
- per V2X session one row: what it discharges, plus the charging it forgoes while discharging
  (time-shared within a block), never more than its flexibility, the energy it could charge at
  its maximum over its stay beyond its need: so the need stays reachable at its maximum charge
  rate whatever the discharge (DESIGN 3.9); and one more row with what it can spare above its
  minimum state of charge, when known.

A small cost per discharged Wh (above the earlier-delivery bonus) keeps the LP from moving energy
from one car to another. The planner runs no minimum-current MIP on a model with discharge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

if TYPE_CHECKING:
    from balancer.plan_types import LpModel, PlanSession

__all__ = ["DischargeColumns", "add_discharge", "discharge_rows"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DISCHARGE_COST = 3e-3
"""Cost per discharged kWh: above the earlier-delivery bonus (at most 2e-3 per kWh), so discharge
never pays for itself, far below the value of energy (about 1 per kWh)."""
NET_BELOW_ZERO_COST = 4.0
"""Cost per kWh and priority of a net below zero: above the most a kWh of a need is worth (3.5 for
a protected share, 1.07 otherwise)."""
UNCOVERED_COST = 100.0
"""Cost per ampere of deficit left uncovered in a block: far above any energy a car could gain."""


@dataclass(frozen=True)
class DischargeColumns:
    """Where the discharge columns are: ``of_x`` (n_x,) the column of ``d`` for each ``x`` column
    (-1: none)."""

    of_x: IntArray


def add_discharge(model: LpModel, sessions: Sequence[PlanSession], capacity_a: FloatArray, deficit_a: FloatArray,
                  export_room_a: FloatArray) -> tuple[LpModel, DischargeColumns | None]:
    """``model`` with the discharge columns and rows (module docstring), or unchanged (and None)
    when no V2X session can discharge in a block with a deficit.

    capacity_a, deficit_a, export_room_a : (n_slots, 3) [A] per slot: the connection's capacity
    the model was built with (>= 0), how far non-EV load exceeds it, how far discharge may push
    the connection's net current below zero
    """
    n_x, n_cap = model.n_x, len(model.cap_a)
    n_s = len(model.need_wh)
    first_slot = np.flatnonzero(np.diff(model.slot_block, prepend=-1))
    deficit = np.maximum.reduceat(np.maximum(np.nan_to_num(deficit_a), 0.0), first_slot, axis=0)
    raw = np.minimum.reduceat(np.maximum(capacity_a, 0.0) - np.maximum(np.nan_to_num(deficit_a), 0.0),
                              first_slot, axis=0)
    export = np.minimum.reduceat(np.maximum(np.nan_to_num(export_room_a), 0.0), first_slot, axis=0)
    dis_max = np.array([s.discharge_max_a or 0.0 for s in sessions], dtype=np.float64)
    if not np.any(deficit > 0) or not np.any(dis_max > 0):
        return model, None
    hi = model.col_hi[:n_x]
    # A discharge column only where the car is there for the whole block: a block's current holds
    # in every slot the car is present in, and a car leaving within the block would leave the later
    # slots' deficit uncovered (for charging, leaving early only lowers the load).
    block_len = np.bincount(model.slot_block)
    pairs = np.bincount(model.fine_col, minlength=n_x)
    low, high = np.full(n_x, np.inf), np.zeros(n_x)
    np.minimum.at(low, model.fine_col, model.fine_wh_per_a)
    np.maximum.at(high, model.fine_col, model.fine_wh_per_a)
    whole = (pairs == block_len[model.col_slot]) & (low >= high - 1e-9)
    flex_wh = np.bincount(model.col_session, weights=hi * model.wh_per_a, minlength=n_s) - model.need_wh
    # Root rows: (phase, block) -> row index of the connection's node row.
    root = np.flatnonzero(model.cap_node == 0)
    root_row = np.full((3, len(first_slot)), -1, dtype=np.int64)
    root_row[model.cap_phase[root], model.cap_slot[root]] = root
    # The direct rows of every x column (its node's rows, one per phase it loads).
    a_csc = model.a.tocsc()
    cols, rows, vals = [], [], []
    of_x = np.full(n_x, -1, dtype=np.int64)
    d_root: list[tuple[int, int]] = []  # (connection row, discharge column)
    n_col = model.a.shape[1]
    j = n_col
    able = (dis_max > 0) & (flex_wh > 0)
    for c in np.flatnonzero(able[model.col_session] & whole).tolist():
        s = int(model.col_session[c])
        b = int(model.col_slot[c])
        entries = a_csc.indices[a_csc.indptr[c]: a_csc.indptr[c + 1]]
        direct = entries[entries < n_cap]
        phases = model.cap_phase[direct]
        if not np.any(deficit[b, phases] > 0):
            continue
        of_x[c] = j
        d_root.extend((int(root_row[p, b]), j) for p in sorted(set(phases.tolist())))
        for r, p in zip(direct.tolist(), phases.tolist(), strict=True):
            if model.cap_node[r] == 0:
                rows.append(r)
                vals.append(1.0)
            else:
                rows.extend((r, int(root_row[p, b])))
                vals.extend((-1.0, 2.0))
            cols.extend([j] * (1 if model.cap_node[r] == 0 else 2))
        cols.append(j)
        rows.append(n_cap + s)
        vals.append(-model.wh_per_a[c] / 1000.0)
        j += 1
    d_cols = np.flatnonzero(of_x >= 0)
    if not len(d_cols):
        return model, None
    # Export rows: per (phase, block) the discharge columns on it (``d_root``), at most the export room.
    export_of, export_row = np.unique(np.array([r for r, _ in d_root], dtype=np.int64), return_inverse=True)
    n_d = len(d_cols)
    d_session = model.col_session[d_cols]
    wh = model.wh_per_a[d_cols]
    d_hi = dis_max[d_session]
    # The flexibility rows: discharged energy plus the charging forgone, within the flexibility.
    v2x = np.unique(d_session)
    n_rows = model.a.shape[0]
    flex_row = n_rows + np.searchsorted(v2x, d_session)
    spare = np.array([np.nan if sessions[s].discharge_spare_wh is None else sessions[s].discharge_spare_wh
                      for s in v2x], dtype=np.float64)
    spare_sessions = v2x[np.isfinite(spare)]
    has_spare = np.isin(d_session, spare_sessions)
    spare_row = n_rows + len(v2x) + np.searchsorted(spare_sessions, d_session[has_spare])
    rows.extend(flex_row.tolist())
    cols.extend(of_x[d_cols].tolist())
    vals.extend((wh * (1.0 + hi[d_cols] / d_hi) / 1000.0).tolist())
    rows.extend(spare_row.tolist())
    cols.extend(of_x[d_cols][has_spare].tolist())
    vals.extend((wh[has_spare] / 1000.0).tolist())
    rows.extend((n_rows + len(v2x) + len(spare_sessions) + export_row.ravel()).tolist())
    cols.extend(j for _, j in d_root)
    vals.extend([1.0] * len(d_root))
    # Slack where the deficit may stay uncovered: +u in the connection's row (y = net - u).
    short = root[raw[model.cap_slot[root], model.cap_phase[root]] < 0]
    u_cols = n_col + n_d + np.arange(len(short))
    rows.extend(short.tolist())
    cols.extend(u_cols.tolist())
    vals.extend([1.0] * len(short))
    # A net below zero: z in the energy row of each V2X session.
    z_cols = n_col + n_d + len(short) + np.arange(len(v2x))
    rows.extend((n_cap + v2x).tolist())
    cols.extend(z_cols.tolist())
    vals.extend([1.0] * len(v2x))
    n_extra = n_d + len(short) + len(v2x)
    n_new_rows = len(v2x) + len(spare_sessions) + len(export_of)
    extra = sp.csc_matrix((vals, (rows, cols)), shape=(n_rows + n_new_rows, n_col + n_extra))
    a = (sp.vstack([model.a, sp.csc_matrix((n_new_rows, n_col))]).tocsc()
         if n_new_rows else model.a)
    a = sp.hstack([a, sp.csc_matrix((a.shape[0], n_extra))]).tocsc() + extra
    col_lo = np.concatenate([model.col_lo, np.zeros(n_extra)])
    col_hi = np.concatenate([model.col_hi, d_hi, np.full(len(short) + len(v2x), np.inf)])
    y_root = n_x + root
    root_raw = raw[model.cap_slot[root], model.cap_phase[root]]
    col_hi[y_root] = np.minimum(col_hi[y_root], root_raw)
    col_lo[y_root] = np.minimum(-export[model.cap_slot[root], model.cap_phase[root]], col_hi[y_root])
    # Nobody charges on a phase with a deficit.
    x_root = model.load[root].tocsc()
    x_on_short = np.flatnonzero(np.asarray(x_root[root_raw < 0].sum(axis=0)).ravel() > 0)
    col_hi[x_on_short] = 0.0
    cost = np.concatenate([model.cost, -DISCHARGE_COST * wh / 1000.0, np.full(len(short), -UNCOVERED_COST),
                           -(NET_BELOW_ZERO_COST * model.weight[v2x] + 1.0)])
    row_lo = np.concatenate([model.row_lo, np.full(n_new_rows, -np.inf)])
    flex_hi = np.maximum(flex_wh[v2x], 0.0) / 1000.0
    row_hi = np.concatenate([model.row_hi, flex_hi, np.maximum(spare[np.isfinite(spare)], 0.0) / 1000.0,
                             export[model.cap_slot[export_of], model.cap_phase[export_of]]])
    out = replace(model, a=a, col_lo=col_lo, col_hi=col_hi, cost=cost, row_lo=row_lo, row_hi=row_hi)
    return out, DischargeColumns(of_x=of_x)


def discharge_rows(columns: DischargeColumns | None, v: FloatArray, fine_col: IntArray) -> FloatArray:
    """The planned discharge [A, >= 0] of every fine (session, slot) pair, from the LP's values ``v``."""
    if columns is None:
        return np.zeros(len(fine_col))
    col = columns.of_x[fine_col]
    return np.where(col >= 0, np.maximum(v[np.maximum(col, 0)], 0.0), 0.0)
