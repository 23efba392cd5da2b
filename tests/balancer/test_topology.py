"""Topology's tree helpers against the sparse ``ancestors`` matrix they stand in for."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.model import Site
from balancer.topology import Topology
from tests.balancer.strategies import sites


@settings(max_examples=100, deadline=None)
@given(sites(max_circuits=8), st.data())
def test_tree_sum_and_path_min_match_the_ancestors_matrix(site: Site, data: st.DataObject) -> None:
    topo = Topology.from_site(site)
    n, n_nodes = topo.n_chargers, topo.n_nodes
    values = np.array(data.draw(st.lists(st.floats(0.0, 100.0), min_size=3 * n, max_size=3 * n))).reshape(3, n)
    ancestors = topo.ancestors.toarray()  # (n_nodes, n)
    np.testing.assert_allclose(topo.tree_sum(values), values @ ancestors.T, rtol=1e-12, atol=1e-9)
    some = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True)), dtype=np.int64)
    np.testing.assert_allclose(topo.tree_sum(values[:, some], some), values[:, some] @ ancestors[:, some].T,
                               rtol=1e-12, atol=1e-9)

    per_node = np.array(data.draw(st.lists(st.floats(-10.0, 10.0), min_size=3 * n_nodes,
                                           max_size=3 * n_nodes))).reshape(3, n_nodes)
    # above[k, j]: node j is node k or a node above it, walking up the parents one by one.
    above = np.zeros((n_nodes, n_nodes), dtype=bool)
    for k in range(n_nodes):
        j = k
        while j >= 0:
            above[k, j] = True
            j = int(topo.node_parent[j])
    expected_min = np.where(above[None, :, :], per_node[:, None, :], np.inf).min(axis=2)
    np.testing.assert_array_equal(topo.path_min(per_node), expected_min)
    flags = per_node > 5.0
    np.testing.assert_array_equal(topo.path_any(flags), (above[None, :, :] & flags[:, None, :]).any(axis=2))
    for d in range(topo.charger_path.shape[0]):
        on_path = topo.charger_path[d] < n_nodes
        assert np.all(topo.node_depth[topo.charger_path[d][on_path]] == d)
        assert np.all(ancestors[topo.charger_path[d][on_path], np.flatnonzero(on_path)] == 1)
    assert np.array_equal((topo.charger_path < n_nodes).sum(axis=0), ancestors.sum(axis=0))
