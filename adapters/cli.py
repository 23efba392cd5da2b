"""The ``balancer`` console script: argument parsing and dispatch to the adapters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from adapters.logs import LEVELS
from balancer.config import summary
from balancer.errors import InvalidInput

__all__ = ["main"]


def _check_config(args: argparse.Namespace) -> int:
    from adapters.config_file import load_config

    try:
        config = load_config(args.path)
    except InvalidInput as exc:
        print(f"{args.path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(summary(config))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from adapters.plan_cli import run_plan

    return run_plan(args)


def _serve(args: argparse.Namespace) -> int:
    from adapters.serve import run_serve

    return run_serve(args)


def _demo(args: argparse.Namespace) -> int:
    from adapters.demo import run_demo

    return run_demo(args)


def _simulate(args: argparse.Namespace) -> int:
    from adapters.ocpp.simulator_cli import run_simulate

    return run_simulate(args)


def _share(raw: str) -> float:
    """A share between 0 and 1 (``--sleepy``)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {raw}")
    return value


def _seconds(raw: str) -> float:
    """A non-negative number of seconds (``--sleep-after-s``)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {raw}")
    return value


def _version() -> str:
    try:
        return metadata.version("ev-balancer")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _sub(sub: Any, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balancer", description="Smart-charging load balancer for EV sites",
                                     epilog="example:\n  balancer serve --config configs/depot-40.yaml",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub(sub, "check-config", "validate a config file (its ${VAR} set from the environment)",
             "ADMIN_TOKEN=... OSCP_TOKEN=... balancer check-config configs/office-4.yaml")
    p.add_argument("path", help="the YAML config, e.g. configs/depot-40.yaml")
    p.set_defaults(func=_check_config)

    p = _sub(sub, "plan", "plan 24 h offline from a forecast and sessions",
             "balancer plan --config configs/depot-40.yaml --forecast configs/examples/forecast-depot.json "
             "--sessions configs/examples/sessions-depot.json --start 2026-03-02T00:00:00Z")
    p.add_argument("--config", required=True, help="the YAML config, e.g. configs/depot-40.yaml")
    p.add_argument("--forecast", required=True,
                   help="OSCP UpdateGroupCapacityForecast JSON body, e.g. configs/examples/forecast-depot.json")
    p.add_argument("--sessions", help="JSON list of sessions, e.g. configs/examples/sessions-depot.json")
    p.add_argument("--site", help="site id (default: the forecast's group, else the first site), e.g. depot-1")
    p.add_argument("--start", help="ISO 8601 UTC start (default: now, rounded down to the slot), "
                                   "e.g. 2026-03-02T00:00:00Z")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a PNG plot of the plan, e.g. plan.png")
    p.set_defaults(func=_plan)

    p = _sub(sub, "serve", "run the service",
             "ADMIN_TOKEN=... OSCP_TOKEN=... balancer serve --config configs/office-4.yaml --log-format text")
    p.add_argument("--config", required=True, help="the YAML config, e.g. configs/depot-40.yaml")
    p.add_argument("--log-format", choices=("json", "text"), default="json",
                   help="json: one JSON object per line on stderr (default); text: for a terminal")
    p.add_argument("--log-level", choices=LEVELS, default="INFO", type=str.upper,
                   help="least severe level logged (default INFO), e.g. --log-level DEBUG")
    p.set_defaults(func=_serve)

    p = _sub(sub, "demo", "run the whole system here with simulated chargers and grid operator",
             "balancer demo --chargers 20 --seconds 60 --plot demo-plot.png")
    p.add_argument("--chargers", type=int, default=20, help="number of simulated chargers (default 20), e.g. 50")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="wall-clock length of the compressed day (default 60), e.g. 120")
    p.add_argument("--plot", default="demo-plot.png", help="where the summary plot goes (default demo-plot.png)")
    p.add_argument("--config", help="optional config (for InfluxDB settings), e.g. configs/office-4.yaml")
    p.set_defaults(func=_demo)

    p = _sub(sub, "simulate", "a fleet of simulated chargers against any CSMS",
             "balancer simulate --url ws://127.0.0.1:9000/ocpp --chargers 10 --protocol ocpp1.6")
    p.add_argument("--url", required=True,
                   help="ws://HOST:PORT/ocpp (the charger id is appended), e.g. ws://127.0.0.1:9000/ocpp")
    p.add_argument("--chargers", type=int, default=10, help="number of chargers (default 10), e.g. 100")
    p.add_argument("--protocol", choices=("mixed", "ocpp1.6", "ocpp2.0.1", "ocpp2.1"), default="mixed",
                   help="OCPP version of every charger, or mixed (default), e.g. ocpp2.0.1; with ocpp2.1 "
                        "every third car is an ISO 15118-20 V2X car offering 16 A of discharge")
    p.add_argument("--prefix", default="CP", help="charger ids are PREFIX001, PREFIX002, ... (default CP)")
    p.add_argument("--password", help="HTTP Basic password (security profile 1), e.g. \"$CHARGER_PASSWORD\"")
    p.add_argument("--meter-interval", type=float, default=10.0,
                   help="seconds between MeterValues (default 10), e.g. 1")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: run until Ctrl-C), e.g. 600")
    p.add_argument("--meter-port", type=int, default=None,
                   help="also serve a site meter over Modbus TCP on this port (0: a free one), measuring a "
                        "building with a noon peak plus what the fleet draws, e.g. 1502")
    p.add_argument("--meter-map", choices=("sunspec", "sdm630"), default="sunspec",
                   help="register map of that meter (default sunspec: model 203 at 40000), e.g. sdm630")
    p.add_argument("--meter-host", default="127.0.0.1", help="where that meter listens (default 127.0.0.1)")
    p.add_argument("--sleepy", type=_share, default=0.0,
                   help="share of the cars that fall asleep after a pause and never resume in their session, "
                        "reporting SuspendedEV (as some cars do; default 0), e.g. 0.2")
    p.add_argument("--sleep-after-s", type=_seconds, default=0.0,
                   help="how long a sleepy car must be paused (offered less than its minimum) before it falls "
                        "asleep [s] (default 0: at its first pause), e.g. 60")
    p.set_defaults(func=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
