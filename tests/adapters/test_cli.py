"""The `balancer` command as users run it: check-config, plan, simulate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from balancer.model import LimitCode

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def balancer(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapters.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", ["office-4.yaml", "depot-40.yaml", "carpark-300.yaml"])
def test_check_config_examples(name: str) -> None:
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", (CONFIGS / name).read_text())
    done = balancer("check-config", str(CONFIGS / name), env={var: f"{var.lower()}-3f9c" for var in names})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK:") and len(done.stdout.strip().splitlines()) == 1


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites:\n  - id: s\n    grid_limit_a: -1\n    fallback_kw: 10\n    chargers:\n"
                   "      - {id: A, max_current_a: 0}\n      - {id: B, max_current_a: 16, circuit: nope}\n")
    done = balancer("check-config", str(bad))
    assert done.returncode == 2
    assert "sites[0].grid_limit_a: must be > 0" in done.stderr
    assert "sites[0].chargers[0].max_current_a: must be > 0" in done.stderr
    assert "sites[0].chargers[1].circuit: unknown circuit 'nope'" in done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("sites: [\n")
    assert balancer("check-config", str(broken)).returncode == 2


def forecast_for(group: str, tmp_path: Path) -> Path:
    body = json.loads((CONFIGS / "examples" / "forecast-depot.json").read_text())
    body["group_id"] = group
    path = tmp_path / f"forecast-{group}.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(("name", "group"), [("office-4.yaml", "office"), ("depot-40.yaml", "depot-1"),
                                             ("carpark-300.yaml", "carpark")])
def test_plan_json_on_every_example(name: str, group: str, tmp_path: Path) -> None:
    args = ["plan", "--config", str(CONFIGS / name), "--forecast", str(forecast_for(group, tmp_path)),
            "--start", "2026-03-02T12:00:00Z", "--json"]
    if name == "depot-40.yaml":
        args += ["--sessions", str(CONFIGS / "examples" / "sessions-depot.json"), "--plot", str(tmp_path / "p.png")]
    done = balancer(*args)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)  # nothing but JSON on stdout
    assert set(body) == {"site", "start", "slot_minutes", "capacity_a", "chargers", "sessions", "solver"}
    assert body["site"] == group and body["slot_minutes"] == 15 and len(body["capacity_a"]) == 96
    assert body["solver"]["status"] in ("optimal", "no_sessions")
    assert body["solver"]["hourly_from_slot"] is None  # small plans are decided per slot
    if name == "depot-40.yaml":
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
        planned = sum(s["planned_wh"] for s in body["sessions"])
        assert planned > 0.9 * sum(s["requested_wh"] for s in body["sessions"])
        for limits in body["chargers"].values():
            assert all(v == 0 or v >= 6 for v in limits["limit_a"])
        # Each session says why it gets what it gets in its first slot (DESIGN 3.6).
        codes = {c.value for c in LimitCode}
        for session in body["sessions"]:
            reason = session["limit_reason"]
            assert set(reason) == {"code", "node", "phase", "detail"} and reason["code"] in codes
            paused = session["first_slot_limit_a"] == 0
            assert paused == (reason["code"] in ("plan", "priority", "paused_min_not_admitted")), session
            assert (reason["node"] is not None) == (reason["code"] in ("capacity", "plan", "priority",
                                                                       "paused_min_not_admitted"))
        assert {"plan", "capacity"} <= {s["limit_reason"]["code"] for s in body["sessions"]}


def test_plan_of_a_large_site_decides_per_hour_after_two_hours(tmp_path: Path) -> None:
    # 300 cars for 20 h (24,000 car-slot pairs): hourly decisions from slot 8 (plan_fine_h: 2).
    config = CONFIGS / "carpark-300.yaml"
    ids = [c["id"] for c in yaml.safe_load(config.read_text())["sites"][0]["chargers"]]
    assert len(ids) == 300
    sessions = [{"charger_id": cid, "arrival": "2026-03-02T12:00:00Z", "departure": "2026-03-03T08:00:00Z",
                 "energy_wh": 20000 + 100 * k} for k, cid in enumerate(ids)]
    (tmp_path / "s.json").write_text(json.dumps(sessions))
    done = balancer("plan", "--config", str(config), "--forecast", str(forecast_for("carpark", tmp_path)),
                    "--sessions", str(tmp_path / "s.json"), "--start", "2026-03-02T12:00:00Z", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["solver"]["status"] == "optimal" and body["solver"]["hourly_from_slot"] == 8
    for limits in body["chargers"].values():
        hours = [limits["limit_a"][k:k + 4] for k in range(8, 80, 4)]  # 14:00 to 08:00, on the hour
        assert all(len(set(hour)) == 1 for hour in hours)
    assert 0 < sum(s["planned_wh"] for s in body["sessions"]) <= sum(s["requested_wh"] for s in body["sessions"])


def test_plan_table_and_bad_files(tmp_path: Path) -> None:
    forecast = forecast_for("depot-1", tmp_path)
    done = balancer("plan", "--config", str(CONFIGS / "depot-40.yaml"), "--forecast", str(forecast),
                    "--sessions", str(CONFIGS / "examples" / "sessions-depot.json"), "--start", "2026-03-02T12:00:00Z")
    assert done.returncode == 0 and "session    requested kWh" in done.stdout
    assert "reason (first slot)" in done.stdout
    session_rows = [line.split() for line in done.stdout.splitlines() if re.match(r"DEP\d{3} ", line)]
    assert len(session_rows) == 30 and all(row[4] in {c.value for c in LimitCode} for row in session_rows)
    rows = [re.findall(r"\d+\.\d", line) for line in done.stdout.splitlines() if re.match(r"\d\d:\d\d ", line)]
    assert len(rows) == 24
    loads = [(np.array(row[0:3], dtype=float), np.array(row[3:6], dtype=float)) for row in rows]
    assert all(np.all(planned <= capacity + 0.05) for capacity, planned in loads)  # per phase
    assert max(planned.max() for _, planned in loads) > 0
    bad_forecast = tmp_path / "f.json"
    bad_forecast.write_text(json.dumps({"group_id": "depot-1", "type": "CONSUMPTION", "forecasted_blocks": [
        {"capacity": -1, "phase": "ALL", "unit": "KW", "start_time": "2026-03-02T12:00:00Z",
         "end_time": "2026-03-02T13:00:00Z"}]}))
    done = balancer("plan", "--config", str(CONFIGS / "depot-40.yaml"), "--forecast", str(bad_forecast))
    assert done.returncode == 2 and "forecasted_blocks[0].capacity" in done.stderr
    bad_sessions = tmp_path / "s.json"
    bad_sessions.write_text(json.dumps([{"charger_id": "NOPE", "arrival": "x", "departure": "2026-03-02T13:00:00Z",
                                         "energy_wh": 10}]))
    done = balancer("plan", "--config", str(CONFIGS / "depot-40.yaml"), "--forecast", str(forecast),
                    "--sessions", str(bad_sessions))
    assert done.returncode == 2 and "[0].charger_id" in done.stderr and "[0].arrival" in done.stderr
    assert done.stdout == ""


def test_simulate_against_the_service(tmp_path: Path) -> None:
    from tests.e2e.service import ServiceProcess

    service = ServiceProcess(tmp_path, {"sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 20, "chargers": [
        {"id": f"SIM{i:03d}", "max_current_a": 32} for i in range(1, 5)]}]}).start()
    try:
        done = balancer("simulate", "--url", service.ocpp_url, "--chargers", "4", "--prefix", "SIM",
                        "--duration", "6", "--meter-interval", "1", timeout=60)
        assert done.returncode == 0, done.stderr
        assert "connected    4" in done.stdout
        assert "TxProfile" in done.stdout or "TxDefaultProfile" in done.stdout
    finally:
        service.stop()


def test_plan_without_start_on_another_days_files_says_so() -> None:
    """The example files are dated 2026-03-02: without --start they would plan zeros from now."""
    files = ("--config", str(CONFIGS / "depot-40.yaml"), "--forecast", str(CONFIGS / "examples" / "forecast-depot.json"),
             "--sessions", str(CONFIGS / "examples" / "sessions-depot.json"))
    done = balancer("plan", *files)
    assert done.returncode == 2 and done.stdout == ""
    assert "--start: every forecast block lies outside the 24 h from now" in done.stderr
    assert "--start 2026-03-02T12:00:00Z" in done.stderr


def test_readme_plan_example_runs_as_printed() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(balancer plan --config configs/\S+ .*)$", readme, re.M)
    assert command, "README has a runnable `balancer plan` example"
    done = balancer(*command.group(1).split()[1:])
    assert done.returncode == 0, done.stderr
    assert "session    requested kWh" in done.stdout


def test_version_and_help_with_examples() -> None:
    done = balancer("--version")
    assert done.returncode == 0 and re.fullmatch(r"balancer \d+\.\d+\.\d+\S*\n", done.stdout)
    for command in ("check-config", "plan", "serve", "demo", "simulate"):
        text = balancer(command, "--help").stdout
        # The example may set the config's ${VAR} secrets first: "ADMIN_TOKEN=... balancer ...".
        assert re.search(r"example:\n  (?:[A-Z_]+=\S+ )*balancer ", text), command
        options = re.findall(r"^  (--[a-z-]+)([^\n]*)\n((?:\s{10,}\S[^\n]*\n)*)", text, re.M)
        for option, rest, more in options:
            help_text = rest + more
            assert option in ("--help", "--json") or "e.g." in help_text or "default" in help_text, (command, option)


def test_serve_refuses_placeholder_secrets(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 10,
                   "chargers": [{"id": "A", "max_current_a": 32, "password": "..."}]}],
        "http": {"admin_token": "change-me"}, "oscp": {"token": "a-real-token-3f9c"},
        "state_dir": str(tmp_path / "state")}))
    assert balancer("check-config", str(config)).returncode == 0  # a valid file, only not to be served
    done = balancer("serve", "--config", str(config), timeout=60)
    assert done.returncode == 2
    assert "http.admin_token: 'change-me' is a placeholder" in done.stderr
    assert "sites[0].chargers[0].password: '...' is a placeholder" in done.stderr
    assert "oscp.token" not in done.stderr
