"""Realistic charging days: an overnight depot, an office, a public car park.

The distributions are small numbers recalled from published statistics of real charging data,
not downloaded and not fitted here; they are approximations and are labelled as such:

- ElaadNL open charging data (public chargers, the Netherlands; their yearly statistics): mean
  energy per public session about 10-15 kWh with a long right tail; connection times bimodal,
  daytime stays of 1-4 h and overnight stays of 10-14 h.
- Lee, Li, Low, "ACN-Data: Analysis and Applications of an Open EV Charging Dataset", ACM e-Energy
  2019 (Caltech workplace garage): arrivals concentrated 7-10 h, departures 16-19 h, mean energy
  about 10 kWh per session, stays around 7-9 h.
- Electric delivery-van depots (fleet reports, e.g. the UK Electric Nation and fleet trials):
  vans return 16-20 h, leave 5-7 h, and need 30-60 kWh (150-250 km at ~0.25 kWh/km).

About 30 % of cars charge on one phase (older or small cars, 7.4 kW on-board chargers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from balancer.model import Charger, Circuit, Site

__all__ = ["SITE_TYPES", "Car", "Scenario", "generate"]

SITE_TYPES = ("depot", "office", "carpark")
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # every day runs 12:00 -> 12:00 the next day
SLOTS = 96
VOLTAGE_V = 230.0


@dataclass(frozen=True)
class Car:
    car_id: str
    charger_id: str
    arrival: datetime
    departure: datetime
    energy_wh: float
    max_current_a: float
    phases: int


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    site: Site
    cars: tuple[Car, ...]
    capacity_a: np.ndarray  # (SLOTS, 3) connection capacity in force per 15-minute slot [A]
    start: datetime = START


def _site(name: str, n_chargers: int, grid_a: float, feeder_a: float, row_a: float) -> Site:
    feeders = [Circuit(id=f"{name}-f{k}", max_current_a=feeder_a) for k in range(2)]
    rows = [Circuit(id=f"{name}-r{k}{r}", parent=f"{name}-f{k}", max_current_a=row_a) for k in range(2) for r in range(3)]
    chargers = tuple(Charger(id=f"{name}-{i:03d}", circuit=rows[i % len(rows)].id, max_current_a=32.0, min_current_a=6.0)
                     for i in range(n_chargers))
    return Site(id=name, voltage_v=VOLTAGE_V, grid_limit_a=grid_a, fallback_kw=20.0,
                circuits=tuple(feeders + rows), chargers=chargers)


def _capacity(base_kw: float, dip_kw: float, grid_a: float, dip_hours: tuple[int, int] = (17, 20),
              start: datetime = START) -> np.ndarray:
    cap = np.empty((SLOTS, 3))
    for k in range(SLOTS):
        hour = (start + timedelta(minutes=15 * k)).hour
        kw = dip_kw if dip_hours[0] <= hour < dip_hours[1] else base_kw
        cap[k] = min(grid_a, kw * 1000 / (3 * VOLTAGE_V))
    return cap


def _hours(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def generate(kind: str, seed: int) -> Scenario:
    """One day of ``kind`` (depot, office, carpark); the same seed always gives the same day."""
    rng = np.random.default_rng(seed)
    day = START.replace(hour=0)
    cars: list[Car] = []
    start = START
    if kind == "depot":
        site = _site("depot", 30, grid_a=160, feeder_a=100, row_a=63)
        capacity = _capacity(base_kw=90, dip_kw=35, grid_a=160)
        for i, charger in enumerate(site.chargers):
            arrival = day + timedelta(hours=_hours(rng, 18.0, 1.0, 16, 20))
            departure = day + timedelta(days=1, hours=_hours(rng, 6.0, 0.5, 5, 7))
            energy = float(np.clip(rng.lognormal(np.log(42000), 0.3), 15000, 80000))
            cars.append(_car(rng, f"van{i}", charger.id, arrival, departure, energy))
    elif kind == "office":
        site = _site("office", 24, grid_a=100, feeder_a=63, row_a=40)
        # The office day runs 06:00 -> 06:00.
        start = day + timedelta(hours=6)
        capacity = _capacity(base_kw=45, dip_kw=20, grid_a=100, start=start)
        for i, charger in enumerate(site.chargers):
            arrival = day + timedelta(hours=_hours(rng, 8.5, 0.8, 7, 10))
            departure = arrival + timedelta(hours=_hours(rng, 8.5, 0.8, 6.5, 10.5))
            energy = float(np.clip(rng.lognormal(np.log(10000), 0.5), 2000, 40000))
            cars.append(_car(rng, f"emp{i}", charger.id, arrival, departure, energy))
    elif kind == "carpark":
        site = _site("carpark", 20, grid_a=125, feeder_a=80, row_a=50)
        capacity = _capacity(base_kw=60, dip_kw=25, grid_a=125)
        free_at = {c.id: START for c in site.chargers}
        n_cars = 60
        for i in range(n_cars):
            arrival = START + timedelta(hours=float(rng.uniform(0, 10)))
            stay = float(np.clip(rng.lognormal(np.log(2.0), 0.6), 0.5, 10))
            departure = arrival + timedelta(hours=stay)
            energy = float(np.clip(rng.lognormal(np.log(10000), 0.6), 1500, 50000))
            charger = next((cid for cid, t in sorted(free_at.items(), key=lambda x: x[1]) if t <= arrival), None)
            if charger is None:
                continue  # the car park is full: this driver goes elsewhere
            free_at[charger] = departure
            cars.append(_car(rng, f"visitor{i}", charger, arrival, departure, energy))
    else:
        raise ValueError(f"unknown site type {kind!r}")
    return Scenario(kind, seed, site, tuple(cars), capacity, start if kind == "office" else START)


def _car(rng: np.random.Generator, car_id: str, charger: str, arrival: datetime, departure: datetime,
         energy: float) -> Car:
    phases = 1 if rng.random() < 0.3 else 3
    max_a = float(rng.choice([16.0, 32.0])) if phases == 3 else 32.0
    return Car(car_id, charger, arrival, departure, energy, max_a, phases)
