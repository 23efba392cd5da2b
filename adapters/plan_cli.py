"""``balancer plan``: plan 24 h offline from an OSCP forecast body and a sessions file."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapters.config_file import load_config
from adapters.highs_quiet import silence_highs_banner
from balancer.errors import InvalidInput, Problem
from balancer.model import Limit, Site
from balancer.plan import PlanSession, SolveOutcome, plan
from balancer.reasons import session_limits
from balancer.timeline import SLOT, horizon_slots, slot_floor
from balancer.topology import Topology, phase_mask
from forecast.blocks import parse_datetime, parse_update_forecast
from forecast.book import ForecastBook

__all__ = ["load_sessions", "run_plan"]

N_SLOTS = horizon_slots(24)


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput([Problem(path, f"cannot read: {exc.strerror or exc}")], what=what) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput([Problem(path, f"not valid JSON: {exc}")], what=what) from exc


def load_sessions(data: Any, site: Site) -> list[PlanSession]:
    """Validate a sessions list; every problem is named ``[i].field``."""
    problems: list[Problem] = []
    if not isinstance(data, list):
        raise InvalidInput([Problem("", "must be a JSON list of sessions")], what="sessions")
    ids = {c.id for c in site.chargers}
    out: list[PlanSession] = []
    allowed = {"charger_id", "arrival", "departure", "energy_wh", "max_current_a", "phases"}
    for i, raw in enumerate(data):
        p = f"[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(p, "must be an object"))
            continue
        before = len(problems)
        for key in raw:
            if key not in allowed:
                problems.append(Problem(f"{p}.{key}", "unknown field"))
        cid = raw.get("charger_id")
        if cid not in ids:
            problems.append(Problem(f"{p}.charger_id", f"unknown charger {cid!r} in site {site.id}"))
        arrival, departure = parse_datetime(raw.get("arrival")), parse_datetime(raw.get("departure"))
        if arrival is None:
            problems.append(Problem(f"{p}.arrival", "must be an RFC 3339 date-time with an offset"))
        if departure is None:
            problems.append(Problem(f"{p}.departure", "must be an RFC 3339 date-time with an offset"))
        if arrival and departure and departure <= arrival:
            problems.append(Problem(f"{p}.departure", "must be after arrival"))
        energy = raw.get("energy_wh")
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or energy < 0:
            problems.append(Problem(f"{p}.energy_wh", f"must be a number >= 0, got {energy!r}"))
        current = raw.get("max_current_a")
        if current is not None and (isinstance(current, bool) or not isinstance(current, (int, float)) or current <= 0):
            problems.append(Problem(f"{p}.max_current_a", f"must be a number > 0, got {current!r}"))
        phases = raw.get("phases")
        if phases is not None and phases not in (1, 3):
            problems.append(Problem(f"{p}.phases", f"must be 1 or 3, got {phases!r}"))
        if len(problems) == before and arrival and departure and isinstance(energy, (int, float)):
            out.append(PlanSession(str(cid), arrival, departure, float(energy),
                                   None if current is None else float(current), None, phases))
    if problems:
        raise InvalidInput(problems, what="sessions")
    return out


def _phase_loads(site: Site, outcome: SolveOutcome, sessions: list[PlanSession]) -> np.ndarray:
    """(3, n_chargers, n_slots) [A]: what each charger's planned limit draws on each grid phase
    (a single-phase car on a three-phase charger on the one phase it loads)."""
    topo = Topology.from_site(site)
    limits = outcome.plan.limit_a if outcome.plan is not None else np.zeros((topo.n_chargers, N_SLOTS))
    car_phases = np.full(topo.n_chargers, 3)
    for s in sessions:
        if s.phases is not None:
            car_phases[topo.index(s.charger_id)] = s.phases
    mask = phase_mask(topo, car_phases)
    return np.asarray(mask.T[:, :, None] * limits[None, :, :], dtype=np.float64)


def _reason_cell(limit: Limit | None) -> str:
    return "-" if limit is None else " ".join(x for x in (limit.code.value, limit.node, limit.phase) if x)


def _table(site: Site, start: datetime, capacity: np.ndarray, outcome: SolveOutcome,
           sessions: list[PlanSession], reasons: dict[str, Limit]) -> str:
    lines = [f"site {site.id}: plan from {start:%Y-%m-%d %H:%M} UTC, 96 x 15 min, solver {outcome.solver} "
             f"{outcome.status} in {outcome.seconds:.2f} s"]
    if outcome.message:
        lines.append(f"  {outcome.message}")
    if outcome.plan is not None and outcome.plan.hourly_from_slot is not None:
        at = start + SLOT * outcome.plan.hourly_from_slot
        lines.append(f"  currents decided per hour from {at:%H:%M} on (large plan, see plan_fine_h)")
    plan_ = outcome.plan
    ids = [s.charger_id for s in sessions]
    shown = ids[:8]
    load = _phase_loads(site, outcome, sessions).sum(axis=1)  # (3, n_slots) at the connection
    lines.append("slot   capacity L1/L2/L3 [A]  planned L1/L2/L3 [A]  " + " ".join(f"{c:>7s}" for c in shown))
    for k in range(0, N_SLOTS, 4):
        t = start + SLOT * k
        row = plan_.limit_a[:, k] if plan_ is not None else np.zeros(len(site.chargers))
        index = {c: i for i, c in enumerate(plan_.charger_ids)} if plan_ is not None else {}
        cells = " ".join(f"{row[index[c]]:7.1f}" if c in index else "      -" for c in shown)
        cap = capacity[k]
        lines.append(f"{t:%H:%M}  {cap[0]:6.1f}/{cap[1]:6.1f}/{cap[2]:6.1f}  "
                     f"{load[0, k]:6.1f}/{load[1, k]:6.1f}/{load[2, k]:6.1f}  {cells}")
    if len(ids) > len(shown):
        lines.append(f"({len(ids) - len(shown)} more sessions not shown; use --json)")
    lines.append("")
    # Why each car gets what it gets in its first slot (DESIGN 3.6), as the real-time allocator decides.
    lines.append("session    requested kWh  planned kWh  first slot A  reason (first slot)")
    for s in sessions:
        planned = plan_.planned_wh.get(s.charger_id, 0.0) if plan_ else 0.0
        limit = reasons.get(s.charger_id)
        now_a = f"{limit.value_a:12.1f}" if limit is not None else "           -"
        lines.append(f"{s.charger_id:10s} {s.energy_wh / 1000:13.1f} {planned / 1000:12.1f}  {now_a}  "
                     f"{_reason_cell(limit)}")
    return "\n".join(lines)


def _plot(path: str, site: Site, start: datetime, capacity: np.ndarray, outcome: SolveOutcome,
          sessions: list[PlanSession]) -> None:
    """One panel per grid phase: each charger's planned current on that phase, stacked under the
    phase's capacity (a single stack over all phases would add single-phase chargers of different
    phases together and look three times over the capacity on a mixed site)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [start + SLOT * k for k in range(N_SLOTS)]
    loads = _phase_loads(site, outcome, sessions)
    used = np.flatnonzero(loads.any(axis=(0, 2)))  # the same chargers, in the same colours, in every panel
    ids = [site.chargers[i].id for i in used]
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True, sharey=True)
    for p, ax in enumerate(axes):
        if len(used):
            ax.stackplot(times, loads[p, used], labels=ids if p == 0 else [""] * len(ids), step="post")
        ax.step(times, capacity[:, p], where="post", color="black", linewidth=2,
                label="capacity" if p == 0 else None)
        ax.set_ylabel(f"L{p + 1} current [A]")
    axes[0].set_title(f"{site.id}: planned current per charger on each phase, under its capacity")
    handles, labels = axes[0].get_legend_handles_labels()
    keep = [k for k, label in enumerate(labels) if label == "capacity"] + list(range(min(12, len(ids))))
    axes[0].legend([handles[k] for k in keep], [labels[k] for k in keep], loc="upper right", fontsize=7, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _outside_horizon(blocks: Any, sessions: list[PlanSession], start: datetime) -> str | None:
    """Why planning the 24 h from ``start`` (now) would plan nothing, or None.

    Without ``--start`` the horizon is now; files made for another day would silently plan zeros.
    """
    end = start + SLOT * N_SLOTS
    if blocks and not any(b.start < end and b.end > start for b in blocks):
        first = min(b.start for b in blocks)
        return (f"every forecast block lies outside the 24 h from now ({start:%Y-%m-%dT%H:%MZ}); "
                f"plan their day with --start, e.g. --start {first:%Y-%m-%dT%H:%M:%SZ}")
    if sessions and not any(s.arrival < end and s.departure > start for s in sessions):
        first = min(s.arrival for s in sessions)
        return (f"every session lies outside the 24 h from now ({start:%Y-%m-%dT%H:%MZ}); "
                f"plan their day with --start, e.g. --start {first:%Y-%m-%dT%H:%M:%SZ}")
    return None


def run_plan(args: Any) -> int:
    try:
        config = load_config(args.config, require_env=False)  # plans need no secrets
        forecast = parse_update_forecast(_read_json(args.forecast, "forecast"))
        if args.site:
            site = config.site(args.site) if args.site in {s.id for s in config.sites} else None
            if site is None:
                raise InvalidInput([Problem("--site", f"unknown site {args.site!r}")], what="arguments")
        else:
            site = next((s for s in config.sites if s.group_id == forecast.group_id), config.sites[0])
        start = slot_floor(datetime.now(UTC))
        if args.start:
            parsed = parse_datetime(args.start)
            if parsed is None:
                raise InvalidInput([Problem("--start", "must be an RFC 3339 date-time with an offset")],
                                   what="arguments")
            start = slot_floor(parsed.astimezone(UTC))
        sessions = load_sessions(_read_json(args.sessions, "sessions"), site) if args.sessions else []
        if not args.start:
            outside = _outside_horizon(forecast.blocks, sessions, start)
            if outside:
                raise InvalidInput([Problem("--start", outside)], what="arguments")
    except InvalidInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    book = ForecastBook()
    book.accept(forecast, start)
    capacity, _ = book.capacity_slots(site, start, N_SLOTS)
    silence_highs_banner()
    topo = Topology.from_site(site)
    outcome = plan(topo, capacity, sessions, start, budget_s=config.control.planner_budget_s,
                   fine_slots=config.control.plan_fine_slots)
    reasons = session_limits(topo, capacity, outcome.plan, sessions, start)
    if args.json:
        limits = outcome.plan.limit_a if outcome.plan is not None else np.zeros((len(site.chargers), N_SLOTS))
        ids = outcome.plan.charger_ids if outcome.plan is not None else tuple(c.id for c in site.chargers)
        body = {
            "site": site.id, "start": start.isoformat().replace("+00:00", "Z"), "slot_minutes": 15,
            "capacity_a": np.round(capacity, 2).tolist(),
            "chargers": {cid: {"limit_a": np.round(limits[i], 2).tolist()} for i, cid in enumerate(ids)},
            "sessions": [{"charger_id": s.charger_id, "requested_wh": s.energy_wh,
                          "planned_wh": round(outcome.plan.planned_wh.get(s.charger_id, 0.0), 1)
                          if outcome.plan else 0.0,
                          "first_slot_limit_a": reasons[s.charger_id].value_a if s.charger_id in reasons else None,
                          "limit_reason": reasons[s.charger_id].to_json() if s.charger_id in reasons else None}
                         for s in sessions],
            "solver": {"name": outcome.solver, "status": outcome.status, "seconds": round(outcome.seconds, 4),
                       "hourly_from_slot": outcome.plan.hourly_from_slot if outcome.plan else None},
        }
        print(json.dumps(body))
    else:
        print(_table(site, start, capacity, outcome, sessions, reasons))
    if args.plot:
        _plot(args.plot, site, start, capacity, outcome, sessions)
    return 0 if outcome.plan is not None else 1
