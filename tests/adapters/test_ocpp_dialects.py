"""OCPP dialects (issue 12 item 5): one object per version, the only place that knows its shapes."""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ocpp.messages
import pytest

from adapters.ocpp.capabilities import Capabilities
from adapters.ocpp.dialects import DEFAULT, REGISTERED, SUBPROTOCOLS, Dialect, for_subprotocol, resolve
from adapters.ocpp.frames import translate_error
from adapters.ocpp.profiles import charging_profile
from balancer.events import ChargerSchedule

ROOT = Path(__file__).resolve().parents[2]
IDS = [d.subprotocol for d in REGISTERED]


def _valid(dialect: Dialect, action: str, payload: dict[str, object]) -> None:
    """Validate as the ``ocpp`` package does on the wire: its validator cache ignores the float
    parser, so a 1.6 SetChargingProfile validator built here with plain floats would make later
    chargers in the same process refuse valid limits such as 10.0 (``multipleOf`` 0.1)."""
    asyncio.run(ocpp.messages.validate_payload(ocpp.messages.Call("1", action, payload), dialect.schema_version))


def test_the_registry_names_each_version_once_and_prefers_the_newest() -> None:
    assert SUBPROTOCOLS == ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")
    assert len(set(SUBPROTOCOLS)) == len(REGISTERED)
    assert all(for_subprotocol(d.subprotocol) is d for d in REGISTERED)
    assert for_subprotocol("ocpp9") is None and for_subprotocol(None) is None
    assert resolve("ocpp2.0.1") is for_subprotocol("ocpp2.0.1") and resolve(DEFAULT) is DEFAULT
    with pytest.raises(ValueError, match="ocpp9"):
        resolve("ocpp9")


@pytest.mark.parametrize("dialect", REGISTERED, ids=IDS)
@pytest.mark.parametrize("tx", [None, "42"])
def test_profiles_and_requests_are_valid_messages_of_their_version(dialect: Dialect, tx: str | None) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    schedule = ChargerSchedule("CP", now, 16.0, ((now, 16.0), (now + timedelta(hours=1), 8.0)), 6.0, phases=1)
    purpose = "TxProfile" if tx else dialect.station_max_purpose
    profile = charging_profile(schedule, Capabilities(rate_units=("W",)), purpose=purpose, stack_level=1,
                               profile_id=2, voltage_v=230.0, integer_amps=False, version=dialect,
                               transaction_id=tx)
    payload = dialect.set_profile_payload(1 if tx else 0, profile)
    _valid(dialect, "SetChargingProfile", payload)
    assert dialect.profile_of(payload) is profile
    (body,) = dialect.schedules(profile)
    assert [p["limit"] for p in body["chargingSchedulePeriod"]] == [3680.0, 1840.0]
    _valid(dialect, "GetCompositeSchedule", dialect.composite_request(1, 900))
    narrowed = dialect.narrow_clear({}, "TxProfile")
    _valid(dialect, "ClearChargingProfile", narrowed)
    assert dialect.clear_purpose(narrowed) == "TxProfile" and not dialect.clear_names_id(narrowed)


@pytest.mark.parametrize("dialect", REGISTERED, ids=IDS)
def test_error_codes_come_out_in_the_version_spelling(dialect: Dialect) -> None:
    ours = dialect.format_violation
    other = "FormatViolation" if ours == "FormationViolation" else "FormationViolation"
    out = translate_error(dialect, f'[4,"7","{other}","bad",{{}}]')
    assert out == f'[4,"7","{ours}","bad",{{}}]'
    assert translate_error(dialect, '[4,"7","NotImplemented","x",{}]') == '[4,"7","NotSupported","x",{}]'
    assert translate_error(dialect, '[4,"7","GenericError","x",{}]') == '[4,"7","GenericError","x",{}]'
    assert "BootNotification" in dialect.known_actions and "Nonsense" not in dialect.known_actions


def test_no_module_outside_the_dialects_names_a_version() -> None:
    """Version strings live in ``dialects/`` (and in the simulator, a charger of its own, and the
    CLI's ``simulate --protocol`` choices): a comparison anywhere else would bypass the dialect."""
    allowed = {"adapters/ocpp/simulator.py", "adapters/ocpp/simulator_cli.py", "adapters/cli.py"}
    found = []
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("adapters/ocpp/dialects/") or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in SUBPROTOCOLS:
                found.append(f"{rel}:{node.lineno}")
    assert not found
