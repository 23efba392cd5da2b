"""Seeded, reproducible charging days for three site types (see ``generator``)."""

from bench.scenarios.generator import SITE_TYPES, Car, Scenario, generate

__all__ = ["SITE_TYPES", "Car", "Scenario", "generate"]
