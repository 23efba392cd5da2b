"""Hypothesis strategies for random sites: circuit trees, mixed 1- and 3-phase chargers."""

from __future__ import annotations

from hypothesis import strategies as st

from balancer.model import PHASES, ROTATIONS, Charger, Circuit, Site


@st.composite
def sites(draw: st.DrawFn, max_chargers: int = 25, max_circuits: int = 6) -> Site:
    """A valid site: a random fuse tree (parents before children) and chargers that fit it."""
    grid = draw(st.floats(10.0, 400.0))
    n_circ = draw(st.integers(0, max_circuits))
    circuits: list[Circuit] = []
    for k in range(n_circ):
        parent = draw(st.sampled_from(["", *(c.id for c in circuits)]))
        circuits.append(Circuit(id=f"c{k}", parent=parent, max_current_a=draw(st.floats(6.0, 300.0))))
    ceilings = {"": grid}
    for c in circuits:
        ceilings[c.id] = min(c.max_current_a, ceilings[c.parent])
    n = draw(st.integers(1, max_chargers))
    chargers = []
    for i in range(n):
        where = draw(st.sampled_from(["", *(c.id for c in circuits)]))
        ceiling = ceilings[where]
        integer = draw(st.booleans())
        min_a = draw(st.sampled_from([0.0, 6.0, 6.0, 8.0, 10.0]))
        if min_a > ceiling:
            min_a = 0.0
        max_a = draw(st.floats(max(min_a, 1.0), max(min_a, 1.0, min(80.0, ceiling))))
        if max_a > ceiling:
            max_a = ceiling
        if integer:
            max_a = float(int(max_a)) if int(max_a) >= max(min_a, 1.0) else max_a
            integer = float(max_a).is_integer()
        phases = draw(st.sampled_from([1, 3]))
        chargers.append(Charger(
            id=f"CP{i}", circuit=where, max_current_a=max_a, min_current_a=min_a, phases=phases,
            phase=draw(st.sampled_from(PHASES)), phase_rotation=draw(st.sampled_from(ROTATIONS)),
            priority=draw(st.integers(0, 3)), integer_amps=integer,
        ))
    return Site(id="site", voltage_v=230.0, grid_limit_a=grid, fallback_kw=draw(st.floats(0.0, 100.0)),
                circuits=tuple(circuits), chargers=tuple(chargers))
