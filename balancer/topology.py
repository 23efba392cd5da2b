"""A site's fuse tree and chargers as aligned numpy arrays, built once per config.

Node 0 is the grid connection; nodes 1.. are the circuits. Every charger belongs to one node and
loads every node on the path from it up to the connection: ``ancestors[k, i]`` is 1 when node
``k`` carries charger ``i``. Summing a per-charger, per-phase load over the tree is then one sparse
product, ``ancestors @ load``, with no Python loop over chargers.

The allocator works on phase-major (3, k) arrays of a subset of the chargers (those still
waiting for admission, say), so it sums with ``tree_sum`` instead (a sum at each charger's own
node, then one bincount from every node to the nodes above it), which takes any subset without
scattering it into a full-width array, and it finds the tightest node above each charger with
``path_min`` / ``path_any``. Both rest on ``node_path``, the nodes above each node, one row per
depth (a tree has only a few levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from balancer.model import CONNECTION, Site

__all__ = ["Topology", "phase_mask"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Topology:
    """Static arrays of one site.

    charger_ids : tuple, (n_chargers,)
    node_ids : tuple, (n_nodes,); ``node_ids[0] == ""`` is the connection
    node_parent : ndarray, shape (n_nodes,); -1 for the connection
    node_depth : ndarray, shape (n_nodes,); 0 for the connection
    node_limit_a : ndarray, shape (n_nodes,) [A per phase]; the fuse rating, node 0 = grid_limit_a
    charger_node : ndarray, shape (n_chargers,); the node a charger hangs on
    ancestors : csr_matrix, shape (n_nodes, n_chargers); 1 where a node carries a charger
    charger_phase_mask : ndarray, shape (n_chargers, 3), bool; grid phases a full-phase car loads
    single_phase_grid : ndarray, shape (n_chargers,); grid phase a single-phase car loads
    """

    site: Site
    charger_ids: tuple[str, ...]
    node_ids: tuple[str, ...]
    node_parent: IntArray
    node_depth: IntArray
    node_limit_a: FloatArray
    charger_node: IntArray
    ancestors: sp.csr_matrix
    charger_phase_mask: BoolArray
    single_phase_grid: IntArray
    min_current_a: FloatArray
    max_current_a: FloatArray
    granularity_a: FloatArray
    priority: FloatArray
    can_pause: BoolArray

    @property
    def n_chargers(self) -> int:
        return len(self.charger_ids)

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def index(self, charger_id: str) -> int:
        """Position of a charger in every per-charger array."""
        return self._index[charger_id]

    @property
    def _index(self) -> dict[str, int]:
        cached: dict[str, int] | None = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {cid: i for i, cid in enumerate(self.charger_ids)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    @property
    def charger_node_x8(self) -> IntArray:
        """``charger_node * 8``: where each charger's row starts in a table of 8 entries per node."""
        cached: IntArray | None = self.__dict__.get("_charger_node_x8")
        if cached is None:
            cached = self.charger_node << 3
            object.__setattr__(self, "_charger_node_x8", cached)
        return cached

    @property
    def mixed_priority(self) -> bool:
        """True when the chargers do not all have the same priority."""
        cached: bool | None = self.__dict__.get("_mixed_priority")
        if cached is None:
            cached = bool(self.n_chargers and np.ptp(self.priority) > 0)
            object.__setattr__(self, "_mixed_priority", cached)
        return cached

    @property
    def node_path(self) -> IntArray:
        """(n_levels, n_nodes): the node at each depth above a node (the node itself at its own depth).

        Below the node's own depth the entry is ``n_nodes``, one past the last node, so a node
        array padded with one neutral column can be indexed with it.
        """
        cached: IntArray | None = self.__dict__.get("_node_path")
        if cached is None:
            cached = np.full((int(self.node_depth.max()) + 1, self.n_nodes), self.n_nodes, dtype=np.int64)
            node = col = np.arange(self.n_nodes)
            while len(node):  # one fuse up per round: as many rounds as levels
                cached[self.node_depth[node], col] = node
                up = self.node_parent[node] >= 0
                node, col = self.node_parent[node][up], col[up]
            object.__setattr__(self, "_node_path", cached)
        return cached

    @property
    def charger_path(self) -> IntArray:
        """(n_levels, n_chargers): the node at each depth above a charger, ``n_nodes`` below its node."""
        cached: IntArray | None = self.__dict__.get("_charger_path")
        if cached is None:
            cached = np.ascontiguousarray(self.node_path[:, self.charger_node])
            object.__setattr__(self, "_charger_path", cached)
        return cached

    @property
    def _tree_index(self) -> tuple[IntArray, IntArray | None, IntArray, IntArray, IntArray, IntArray]:
        """Indices for ``tree_sum``: the phase offsets into flat (3, n_nodes) arrays; the chargers
        in node order (None when they already are), where each node's run starts, and which node
        it is; and for every (node, node at or above it) pair and phase, where to read and add."""
        cached: tuple[IntArray, IntArray | None, IntArray, IntArray, IntArray, IntArray] | None = (
            self.__dict__.get("_tree_index_cache"))
        if cached is None:
            offset = self.n_nodes * np.arange(3, dtype=np.int64)[:, None]
            by_node = np.argsort(self.charger_node, kind="stable")
            sorted_node = self.charger_node[by_node]
            starts = np.flatnonzero(np.diff(sorted_node, prepend=-1))
            path = self.node_path
            real = path < self.n_nodes
            above = path[real]
            below = np.broadcast_to(np.arange(self.n_nodes), path.shape)[real]
            in_order = bool(np.all(by_node == np.arange(self.n_chargers)))
            cached = (offset, None if in_order else by_node, starts, sorted_node[starts],
                      (below + offset).ravel(), (above + offset).ravel())
            object.__setattr__(self, "_tree_index_cache", cached)
        return cached

    def tree_sum(self, values: FloatArray, chargers: IntArray | None = None) -> FloatArray:
        """Per-node, per-phase totals of per-charger values, each counted at its node and above.

        values : ndarray, shape (3, k); the values of ``chargers`` (k,), or of all chargers
        returns : ndarray, shape (3, n_nodes)
        First the totals at the chargers' own nodes: for all chargers a sum over each node's run
        of chargers (``np.add.reduceat``, twice as fast as a bincount), for some a bincount. Then
        one bincount adds each of those to every node above it.
        """
        offset, by_node, starts, hosts, below, above = self._tree_index
        size = 3 * self.n_nodes
        own: FloatArray
        if chargers is None:
            own = np.zeros(size)
            if len(starts):
                runs = values if by_node is None else np.take(values, by_node, axis=1)
                own.reshape(3, self.n_nodes)[:, hosts] = np.add.reduceat(runs, starts, axis=1)
        else:
            where = (self.charger_node[chargers] + offset).ravel()
            own = np.asarray(np.bincount(where, weights=values.ravel(), minlength=size), dtype=np.float64)
        total = np.bincount(above, weights=own[below], minlength=size).reshape(3, self.n_nodes)
        return np.asarray(total, dtype=np.float64)

    def path_min(self, values: FloatArray) -> FloatArray:
        """(3, n_nodes): the least of ``values`` (3, n_nodes) over each node and the nodes above it."""
        padded = np.concatenate([values, np.full((3, 1), np.inf)], axis=1)
        least: FloatArray = np.take(padded, self.node_path, axis=1).min(axis=1)
        return least

    def path_any(self, values: BoolArray) -> BoolArray:
        """(3, n_nodes): whether ``values`` (3, n_nodes) holds at a node or any node above it."""
        padded = np.concatenate([values, np.zeros((3, 1), dtype=bool)], axis=1)
        return np.asarray(np.take(padded, self.node_path, axis=1).any(axis=1), dtype=np.bool_)

    @classmethod
    def from_site(cls, site: Site) -> Topology:
        """Build the arrays of a validated site (the config guarantees a tree with known parents)."""
        node_ids = (CONNECTION, *(c.id for c in site.circuits))
        node_pos = {nid: k for k, nid in enumerate(node_ids)}
        n_nodes = len(node_ids)
        parent = np.full(n_nodes, -1, dtype=np.int64)
        for c in site.circuits:
            parent[node_pos[c.id]] = node_pos[c.parent]
        depth = np.zeros(n_nodes, dtype=np.int64)
        for k in range(1, n_nodes):
            d, j = 0, k
            while j > 0:
                j = int(parent[j])
                d += 1
            depth[k] = d
        limit = np.array([site.grid_limit_a, *(c.max_current_a for c in site.circuits)], dtype=np.float64)

        chargers = site.chargers
        n = len(chargers)
        charger_node = np.array([node_pos[c.circuit] for c in chargers], dtype=np.int64)
        rows: list[int] = []
        cols: list[int] = []
        for i, node in enumerate(charger_node.tolist()):
            j = node
            while j >= 0:
                rows.append(j)
                cols.append(i)
                j = int(parent[j])
        ancestors = sp.csr_matrix(
            (np.ones(len(rows)), (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))),
            shape=(n_nodes, n),
        )
        mask = np.zeros((n, 3), dtype=bool)
        single = np.zeros(n, dtype=np.int64)
        for i, charger in enumerate(chargers):
            mask[i, list(charger.grid_phases())] = True
            single[i] = charger.grid_phases(1)[0]
        return cls(
            site=site,
            charger_ids=tuple(c.id for c in chargers),
            node_ids=node_ids,
            node_parent=parent,
            node_depth=depth,
            node_limit_a=limit,
            charger_node=charger_node,
            ancestors=ancestors,
            charger_phase_mask=mask,
            single_phase_grid=single,
            min_current_a=np.array([c.min_current_a for c in chargers], dtype=np.float64),
            max_current_a=np.array([c.max_current_a for c in chargers], dtype=np.float64),
            granularity_a=np.array([c.granularity_a for c in chargers], dtype=np.float64),
            priority=np.array([c.priority for c in chargers], dtype=np.float64),
            can_pause=np.array([c.can_pause for c in chargers], dtype=bool),
        )


def phase_mask(topology: Topology, car_phases: IntArray) -> BoolArray:
    """Grid phases loaded per charger given the number of phases each car uses.

    car_phases : ndarray, shape (n_chargers,); 1, 2 or 3 (3 for unknown)
    returns : ndarray, shape (n_chargers, 3), bool
    """
    mask = topology.charger_phase_mask.copy()
    one = (car_phases == 1) & (mask.sum(axis=1) == 3)
    mask[one] = False
    mask[np.flatnonzero(one), topology.single_phase_grid[one]] = True
    return mask
