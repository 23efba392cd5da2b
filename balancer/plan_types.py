"""The planner's data: what it is asked (``PlanSession``), what it answers (``Plan``,
``SolveOutcome``) and the LP in matrix form (``LpModel``) shared by the model builder, the solvers and
the minimum-current repair."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

__all__ = ["FloatArray", "IntArray", "LpModel", "Plan", "PlanSession", "SolveOutcome"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PlanSession:
    """One car to plan for. Times are aware UTC; ``None`` fields default to the charger's values."""

    charger_id: str
    arrival: datetime
    departure: datetime
    energy_wh: float
    max_current_a: float | None = None
    min_current_a: float | None = None
    phases: int | None = None
    weight: float | None = None
    requested_wh: float | None = None
    """The session's whole request [Wh] (``energy_wh`` is what is left of it; None: the same):
    its protected share is ``PROTECT_SHARE`` of this, less what it already got."""
    discharge_max_a: float | None = None
    """V2X: how far the car may discharge per phase [A] (``balancer.plan_v2x``); None: not at all."""
    discharge_spare_wh: float | None = None
    """V2X: what the car can give above its minimum state of charge [Wh]; None: not limited."""
    charging: bool = False
    """The car charges now: its minimum current in the first slot weighs ``KEEP_BONUS`` more per Wh
    and the rest ``STICKY_BONUS`` (``balancer.plan_model``), so it goes on rather than pausing."""
    limit_now_a: float | None = None
    """The limit a charging car holds now [A]: ``STICKY_BONUS`` counts its first slot's current up to
    this (None: up to its maximum), so the plan keeps each car's current where plans are equal."""


@dataclass(frozen=True)
class Plan:
    """limit_a : (n_chargers, n_slots) [A per phase]; planned_wh per session's charger id;
    ``hourly_from_slot``: the first slot whose current was decided per hour (None: every slot
    on its own, see the module docstring)."""

    start: datetime
    slot_s: int
    charger_ids: tuple[str, ...]
    limit_a: FloatArray
    planned_wh: dict[str, float] = field(default_factory=dict)
    hourly_from_slot: int | None = None

    def first_slot(self) -> FloatArray:
        """The planned limits of the first slot, (n_chargers,) [A]."""
        return np.asarray(self.limit_a[:, 0], dtype=np.float64)


@dataclass(frozen=True)
class SolveOutcome:
    """The planner's answer: ``status`` is data (optimal, time_limit, infeasible, error, no_sessions)."""

    status: str
    plan: Plan | None
    solver: str
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class LpModel:
    """The LP in matrix form: maximise ``cost @ v`` over ``row_lo <= A v <= row_hi``,
    ``col_lo <= v <= col_hi``. Columns: the ``x[s, b]`` pairs (``col_session``, ``col_slot``: the
    decision block, which is the slot itself unless the model is large), then the node flows
    ``y``, then the fairness segments ``g``. ``slot_block`` (n_slots,) maps slots to blocks; the
    ``fine_*`` arrays list every (session, slot) pair with the column that sets its current;
    ``hourly_from_slot`` is the first slot decided per hour (None: none is).

    ``load`` (n_cap, n_x) and ``cap_a`` (n_cap,) [A] restate the node rows without flows: row ``k``
    of ``load @ x`` is the current on one node, phase and slot (each current counted with the share
    of the slot it takes, ``balancer.plan_model.load_share``), at most ``cap_a[k]``. The
    minimum-current repair uses them to know the headroom left by a plan.
    """

    a: sp.csc_matrix
    load: sp.csc_matrix
    cap_a: FloatArray
    row_lo: FloatArray
    row_hi: FloatArray
    col_lo: FloatArray
    col_hi: FloatArray
    cost: FloatArray
    col_session: IntArray
    col_slot: IntArray
    wh_per_a: FloatArray
    min_a: FloatArray
    need_wh: FloatArray
    weight: FloatArray
    slot_block: IntArray
    fine_col: IntArray
    fine_slot: IntArray
    fine_wh_per_a: FloatArray
    hourly_from_slot: int | None
    fine_share: FloatArray | None = None
    """Per fine pair, the share of its slot's capacity the current takes (``load_share``; None: 1)."""
    cap_node: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n_cap,) node, phase and block of every node row (``balancer.plan_v2x`` adds to them)."""
    cap_phase: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cap_slot: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    session_mask: npt.NDArray[np.bool_] | None = None
    """(n_sessions, 3) the grid phases each session's car loads."""
    keep_col: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """First-slot columns of the cars charging now (``PlanSession.charging``): a pause for them
    costs, so ``meet_minimums`` keeps them at their minimum where the LP gave them current."""

    @property
    def n_x(self) -> int:
        return len(self.col_session)
