"""``balancer demo`` runs, two code trees alternating: delivered energy, pauses per car, profile
pushes, draw above capacity (issue 17 item 5). One JSON line per run, then a summary per tree.

    .venv/bin/python bench/demo_churn.py --base /tmp/main --runs 3 --seconds 120

``--base``: a tree holding another version's ``balancer`` and ``adapters`` (``git archive``); the
other tree is this checkout. Each run is its own process (the demo's clock, ports and state).
The machine's load moves these figures a lot: alternate, and compare runs taken side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean
from typing import Any

CHILD = """
import io, json, asyncio
from adapters.demo import run_demo_async
r = asyncio.run(run_demo_async(n_chargers={n}, seconds={seconds}, plot=None, out=io.StringIO()))
req, got = sum(r.requested_wh.values()), sum(r.delivered_wh.values())
print(json.dumps({{"delivered_pct": 100 * got / max(req, 1),
                  "worst_car_pct": 100 * min((r.delivered_wh[k] / v for k, v in r.requested_wh.items() if v), default=1),
                  "pauses_per_car": sum(r.pauses.values()) / max(len(r.pauses), 1),
                  "most_pauses": max(r.pauses.values(), default=0), "pushes": r.pushes,
                  "violations": r.violations, "worst_overshoot_a": r.worst_overshoot_a,
                  "limit_violations": r.limit_violations}}))
"""


def run(root: Path, n: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    try:
        out = subprocess.run([sys.executable, "-c", CHILD.format(n=n, seconds=seconds)], env=env, cwd=root,
                             capture_output=True, text=True, check=True, timeout=3 * seconds + 120).stdout
    except subprocess.TimeoutExpired:
        return {"timed_out": True}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--chargers", type=int, default=20)
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "branch": Path(__file__).resolve().parent.parent}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for k in range(args.runs):
        for name, root in (trees.items() if k % 2 == 0 else reversed(trees.items())):
            result = run(root, args.chargers, args.seconds)
            results[name].append(result)
            print(json.dumps({"tree": name, "run": k + 1, **result}), flush=True)
    for name, rows in results.items():
        done = [r for r in rows if "timed_out" not in r]
        print(json.dumps({"tree": name, "runs": len(done), "timed_out": len(rows) - len(done),
                          **{key: round(mean(r[key] for r in done), 3) for key in (done[0] if done else {})}}))


if __name__ == "__main__":
    main()
