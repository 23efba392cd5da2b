"""The ``balancer`` console script: argument parsing and dispatch to the adapters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    from adapters.app import run_serve

    return run_serve(args)


def _demo(args: argparse.Namespace) -> int:
    from adapters.demo import run_demo

    return run_demo(args)


def _simulate(args: argparse.Namespace) -> int:
    from adapters.ocpp.simulator_cli import run_simulate

    return run_simulate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balancer", description="Smart-charging load balancer for EV sites")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("path")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("plan", help="plan 24 h offline from a forecast and sessions")
    p.add_argument("--config", required=True)
    p.add_argument("--forecast", required=True, help="OSCP UpdateGroupCapacityForecast JSON body")
    p.add_argument("--sessions", help="JSON list of sessions")
    p.add_argument("--site", help="site id (default: the forecast's group, else the first site)")
    p.add_argument("--start", help="ISO 8601 UTC start (default: now, rounded down to the slot)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="write a PNG plot of the plan")
    p.set_defaults(func=_plan)

    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="run the whole system here with simulated chargers and grid operator")
    p.add_argument("--chargers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0, help="wall-clock length of the compressed day")
    p.add_argument("--plot", default="demo-plot.png")
    p.add_argument("--config", help="optional config (for InfluxDB settings)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="a fleet of simulated chargers against any CSMS")
    p.add_argument("--url", required=True, help="ws://HOST:PORT/ocpp (the charger id is appended)")
    p.add_argument("--chargers", type=int, default=10)
    p.add_argument("--protocol", choices=("mixed", "ocpp1.6", "ocpp2.0.1"), default="mixed")
    p.add_argument("--prefix", default="CP", help="charger ids are PREFIX001, PREFIX002, ...")
    p.add_argument("--password", help="HTTP Basic password (security profile 1)")
    p.add_argument("--meter-interval", type=float, default=10.0, help="seconds between MeterValues")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: run until Ctrl-C)")
    p.set_defaults(func=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
