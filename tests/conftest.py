"""Test-wide settings: in CI (CI=true) hypothesis runs derandomized, so a run is reproducible."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

pytest_plugins = ["tests.cluster_fixtures"]  # PostgreSQL and NATS servers for the cluster tests
