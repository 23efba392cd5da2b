"""The forecasts in force for one site, and the capacity they give at any time.

Rules (DESIGN 3.4 and 4, issue 4):
- forecasts are kept per type; a new one replaces older blocks only where it overlaps them in
  time, older blocks outside the overlap stay until they end;
- at time t the capacity is the CONSUMPTION forecast if it covers t and the grid operator is
  online (now, when the slots are read); else the FALLBACK_CONSUMPTION forecast; else
  ``fallback_kw``; always capped by the connection limit. The source of the value is reported with it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from balancer.model import Site
from balancer.timeline import SLOT_S, CapacityTimeline, slot_floor
from forecast.blocks import FORECAST_TYPES, CapacityForecast, ForecastedBlock, block_from_json, block_to_json
from forecast.slots import blocks_to_slots

__all__ = ["ForecastBook", "GridOperatorLink", "merge_blocks"]

FloatArray = npt.NDArray[np.float64]
KEEP_PAST = timedelta(days=1)


def merge_blocks(old: Sequence[ForecastedBlock], new: Sequence[ForecastedBlock]) -> list[ForecastedBlock]:
    """Older blocks cut away wherever a new block lies in time, plus the new blocks.

    The new blocks' spans are first joined into disjoint sorted intervals, so each old block is
    cut only by the intervals it overlaps (found by bisection): O((n + m) log m), not O(n m).
    """
    union: list[tuple[datetime, datetime]] = []
    for s, e in sorted((b.start, b.end) for b in new):
        if union and s <= union[-1][1]:
            if e > union[-1][1]:
                union[-1] = (union[-1][0], e)
        else:
            union.append((s, e))
    ends = [e for _, e in union]
    kept: list[ForecastedBlock] = []
    for block in old:
        a, b = block.start, block.end
        k = bisect_right(ends, a)  # the first interval ending after the block starts
        if k == len(union) or union[k][0] >= b:
            kept.append(block)
            continue
        while k < len(union) and union[k][0] < b:
            s, e = union[k]
            if a < s:
                kept.append(ForecastedBlock(block.capacity, block.phase, block.unit, a, s))
            a = max(a, e)
            k += 1
        if a < b:
            kept.append(ForecastedBlock(block.capacity, block.phase, block.unit, a, b))
    return sorted([*kept, *new], key=lambda b: (b.start, b.end))


@dataclass
class GridOperatorLink:
    """The grid operator's heartbeat state.

    Until a first heartbeat arrives no heartbeat is agreed and the operator counts as online (its
    forecasts govern through their own validity). After that it is online while
    ``t < offline_mode_at``: at ``offline_mode_at`` exactly it is offline. A heartbeat moves
    ``offline_mode_at``; a forecast received while offline makes it online again for one more
    heartbeat period.
    """

    offline_mode_at: datetime | None = None
    last_heartbeat_at: datetime | None = None

    def online(self, t: datetime) -> bool:
        return self.offline_mode_at is None or t < self.offline_mode_at

    def heartbeat(self, now: datetime, offline_mode_at: datetime) -> None:
        self.last_heartbeat_at = now
        self.offline_mode_at = offline_mode_at

    def forecast_received(self, now: datetime) -> None:
        if self.offline_mode_at is not None and not self.online(now):
            period = self.offline_mode_at - (self.last_heartbeat_at or self.offline_mode_at)
            self.offline_mode_at = now + max(period, timedelta(seconds=60))

    def to_json(self) -> dict[str, Any]:
        return {"offline_mode_at": self.offline_mode_at.isoformat() if self.offline_mode_at else None,
                "last_heartbeat_at": self.last_heartbeat_at.isoformat() if self.last_heartbeat_at else None}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GridOperatorLink:
        def parse(value: Any) -> datetime | None:
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        return cls(parse(raw.get("offline_mode_at")), parse(raw.get("last_heartbeat_at")))


@dataclass
class ForecastBook:
    """Every forecast type received for one site, and the grid-operator link state."""

    blocks: dict[str, list[ForecastedBlock]] = field(default_factory=lambda: {t: [] for t in FORECAST_TYPES})
    link: GridOperatorLink = field(default_factory=GridOperatorLink)
    revision: int = 0
    """Counts the changes of ``blocks`` (not persisted: a timeline's revision only compares within a run)."""

    def accept(self, forecast: CapacityForecast, now: datetime) -> None:
        """Merge a validated forecast in (newer replaces older where they overlap)."""
        merged = merge_blocks(self.blocks.get(forecast.type, []), forecast.blocks)
        kept = [b for b in merged if b.end > now - KEEP_PAST]
        if kept != self.blocks.get(forecast.type):
            self.revision += 1
        self.blocks[forecast.type] = kept
        self.link.forecast_received(now)

    def capacity_slots(self, site: Site, start: datetime, n_slots: int, slot_s: int = SLOT_S,
                       now: datetime | None = None) -> tuple[FloatArray, list[str]]:
        """Capacity in force per slot from ``start``: (n_slots, 3) [A] and the source per slot.

        ``now`` is when the grid operator's link state is read (default: ``start``).
        """
        timeline = self.timeline(site, start, n_slots, slot_s=slot_s, now=now)
        return np.array(timeline.capacity_a), list(timeline.sources)

    def timeline(self, site: Site, start: datetime, n_slots: int, *, slot_s: int = SLOT_S,
                 now: datetime | None = None, revision: int = 0) -> CapacityTimeline:
        """The capacity in force per slot from ``start`` as a ``CapacityTimeline`` (which applies
        the connection's limit); ``now`` is when the link state is read (default: ``start``)."""
        grid = site.grid_limit_a
        fallback = np.full((n_slots, 3), site.fallback_a)
        sources = np.full(n_slots, "fallback_config", dtype=object)
        capacity = fallback.copy()
        fb, fb_cov = blocks_to_slots(self.blocks["FALLBACK_CONSUMPTION"], start, n_slots, site.voltage_v, slot_s)
        use_fb = fb_cov > 0
        fb_val = np.where(np.isnan(fb), grid, fb)
        fb_val = np.where((fb_cov < 1.0)[:, None], np.minimum(fb_val, fallback), fb_val)
        capacity[use_fb] = fb_val[use_fb]
        sources[use_fb] = "fallback_forecast"
        main, cov = blocks_to_slots(self.blocks["CONSUMPTION"], start, n_slots, site.voltage_v, slot_s)
        # The link state is read once, now, for every slot: a future offline moment is not
        # assumed in advance; when it comes the capacity is read again and fallback takes over.
        use = (cov > 0) & self.link.online(now or start)
        main_val = np.where(np.isnan(main), grid, main)
        main_val = np.where((cov < 1.0)[:, None], np.minimum(main_val, capacity), main_val)
        capacity[use] = main_val[use]
        sources[use] = "forecast"
        return CapacityTimeline.of(start, capacity, [str(s) for s in sources], grid_limit_a=grid,
                                   revision=revision, slot_s=slot_s)

    def export_cap_a(self, site: Site, t: datetime, now: datetime | None = None) -> FloatArray | None:
        """The GENERATION forecast in force at ``t`` (3,) [A]: how much the site may feed in, the
        cap on V2X export (DESIGN 3.9); None when no such block covers ``t`` or the grid operator
        is offline. A phase the blocks leave free is not capped (inf)."""
        epoch = int(t.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % 900, tz=t.tzinfo)
        cap, cov = blocks_to_slots(self.blocks["GENERATION"], start, 1, site.voltage_v)
        if cov[0] <= 0 or not self.link.online(now or t):
            return None
        return np.asarray(np.where(np.isnan(cap[0]), np.inf, np.maximum(cap[0], 0.0)), dtype=np.float64)

    def capacity_at(self, site: Site, t: datetime) -> tuple[FloatArray, str]:
        """Capacity in force at ``t`` (3,) [A] and its source."""
        capacity, sources = self.capacity_slots(site, slot_floor(t), 1, now=t)
        return capacity[0], sources[0]

    def to_json(self) -> dict[str, Any]:
        return {"blocks": {k: [block_to_json(b) for b in v] for k, v in self.blocks.items()},
                "link": self.link.to_json()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ForecastBook:
        book = cls()
        for kind, blocks in (raw.get("blocks") or {}).items():
            if kind in book.blocks:
                book.blocks[kind] = [block_from_json(b) for b in blocks]
        book.link = GridOperatorLink.from_json(raw.get("link") or {})
        return book
