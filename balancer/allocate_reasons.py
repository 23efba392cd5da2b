"""Why each charger got its limit (DESIGN 3.6): the allocator's reason codes, found vectorised
from the final limits (``balancer.allocate``'s module docstring, "Reasons")."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from balancer.model import LIMIT_CODES, LimitCode
from balancer.topology import Topology

__all__ = ["CAR_MAX_CODE", "CHARGER_MAX_CODE", "code_number", "limit_reasons"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]
IntArray = npt.NDArray[np.int64]


def code_number(code: LimitCode) -> int:
    """The small integer standing for ``code`` in the allocator's reason arrays."""
    return LIMIT_CODES.index(code)


_CAPACITY = code_number(LimitCode.CAPACITY)
CHARGER_MAX_CODE = code_number(LimitCode.CHARGER_MAX)
CAR_MAX_CODE = code_number(LimitCode.CAR_MAX)
_PLAN = code_number(LimitCode.PLAN)
_PRIORITY = code_number(LimitCode.PRIORITY)
_PAUSED = code_number(LimitCode.PAUSED_MIN_NOT_ADMITTED)


def limit_reasons(topo: Topology, room: FloatArray, mask: BoolArray, limit: FloatArray, short: BoolArray,
             stopped: BoolArray, max_code: CodeArray, held_back: BoolArray) -> tuple[CodeArray, IntArray, CodeArray]:
    """Why each charger got its limit: (code, node, phase) arrays (see ``Allocation``).

    room : (3, n_nodes) [A] capacity less the final load; short : (n,) chargers below their bound
    stopped : (n,) the short ones that got nothing; held_back : (n,) the plan gave them a target
    below their minimum
    The tightest node above every *node* (least room, the connection first among equals) costs a
    gather over the tree's few levels; each short charger then reads its node's, on the phases it
    loads. Nothing here is per charger in Python.
    """
    if not short.any():
        return max_code, np.full(topo.n_chargers, -1, dtype=np.int64), np.full(topo.n_chargers, -1, dtype=np.int8)
    path = topo.node_path  # (levels, n_nodes)
    along = np.take(np.concatenate([room, np.full((3, 1), np.inf)], axis=1), path, axis=1)  # (3, levels, nodes)
    level = along.argmin(axis=1)  # (3, n_nodes)
    least = along.min(axis=1)
    tightest = path[level, np.arange(topo.n_nodes)]  # (3, n_nodes) node index
    # A charger loads one of seven sets of phases: the tightest (node, phase) per node for each set
    # is a small table (phase sets as bits: L1 = 1, L2 = 2, L3 = 4), and every charger reads its
    # entry with one gather.
    l1, l2, l3 = least
    best = np.zeros((8, topo.n_nodes), dtype=np.int64)
    best[2], best[4] = 1, 2
    best[3] = np.where(l2 < l1, 1, 0)
    best[5] = np.where(l3 < l1, 2, 0)
    best[6] = np.where(l3 < l2, 2, 1)
    best[7] = np.where(l3 < np.minimum(l1, l2), 2, best[3])
    table_node = np.take_along_axis(tightest, best, axis=0)
    table_phase = best.astype(np.int8)
    table_node[0], table_phase[0] = -1, -1  # the empty set: what chargers at their bound read
    bits = mask.view(np.uint8)
    which = topo.charger_node_x8 + (bits[0] | (bits[1] << 1) | (bits[2] << 2)) * short.view(np.uint8)
    node = np.take(table_node.T.ravel(), which)  # tables by node, then phase set
    phase = np.take(table_phase.T.ravel(), which)
    code = max_code.copy()
    np.putmask(code, short, _CAPACITY)
    np.putmask(code, stopped, _PAUSED)
    np.putmask(code, stopped & held_back, _PLAN)
    if topo.mixed_priority and stopped.any():
        # Paused while a charger of higher priority runs below the same node: priority.
        running = limit > 0
        top = np.full(topo.n_nodes + 1, -np.inf)
        np.maximum.at(top, topo.charger_node[running], topo.priority[running])
        below = top[: topo.n_nodes].copy()
        for row in path:  # every node's best pushed up to each node above it
            np.maximum.at(top, row, below)
        np.putmask(code, (code == _PAUSED) & (topo.priority < top[node]), _PRIORITY)
    return code, node, phase
