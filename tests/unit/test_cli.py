"""The listing commands, as a script would use them (--json)."""

import json
from pathlib import Path

import pytest

from ingest.cli import main
from ingest.sinks.deadletters import DeadLetterStore, NewDeadLetter
from tests.unit.test_alert_store import url  # noqa: F401  (a fixture: SQLite and PostgreSQL)

REPO = Path(__file__).resolve().parents[2]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_devices_list_json_has_attributes_and_area_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    devices = run_json(capsys, "devices", "list", "--kind", "river", "--json")
    assert isinstance(devices, list) and len(devices) >= 8
    assert {d["kind"] for d in devices} == {"river"}
    first = devices[0]
    assert first["warning_level_m"] < first["guarantee_level_m"]
    assert set(first["area_path"]) == {"grid", "village", "township", "county"}


def test_deadletters_list_json_counts_per_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeadLetterStore(tmp_path / "deadletters.sqlite3")
    store.add_many(
        [
            NewDeadLetter(1, "iot/river/r1/telemetry", "invalid_json", "bad", b"{x"),
            NewDeadLetter(2, "iot/river/r1/telemetry", "schema", "ph: wrong", b'{"ph":"7"}'),
            NewDeadLetter(3, "iot/river/zz/telemetry", "invalid_json", "bad", b"\xff"),
        ]
    )
    store.close()
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    listing = run_json(capsys, "deadletters", "list", "--json")
    assert isinstance(listing, dict)
    assert listing["counts"] == {"invalid_json": 2, "schema": 1}
    assert [d["id"] for d in listing["dead_letters"]] == [3, 2, 1]  # newest first
    assert listing["dead_letters"][0]["payload"] == "\ufffd"  # kept, shown safely
    only = run_json(capsys, "deadletters", "list", "--reason", "schema", "--json")
    assert isinstance(only, dict) and [d["reason"] for d in only["dead_letters"]] == ["schema"]


def test_registry_check_names_file_entry_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text(
        "areas:\n"
        "  - {id: c, name: 市, level: city}\n"
        "devices:\n"
        "  - {id: r1, kind: river, name: 站, lat: 27, lon: 111, grid: nowhere, river: 资江,\n"
        "     normal_level_m: 1, warning_level_m: 3, guarantee_level_m: 2}\n"
    )
    assert main(["registry", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: devices[0] (id=r1)" in err
    assert "normal_level_m < warning_level_m < guarantee_level_m" in err
    assert main(["registry", "check", str(REPO / "config" / "registry.yaml")]) == 0


def test_rules_check_accepts_the_defaults_and_names_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    assert main(["rules", "check", str(REPO / "config" / "rules.yaml")]) == 0
    assert "OK, 15 rules" in capsys.readouterr().out
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - {id: x, type: threshold}\n")
    assert main(["rules", "check", str(bad)]) == 1
    assert f"{bad}: rules[0] (id=x): severity: Field required" in capsys.readouterr().err


def test_alerts_list_ack_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from devices.kinds import Kind, Level
    from ingest.alerts.store import AlertStore, sqlite_url
    from ingest.ops.processes import free_port
    from rules.alerts import open_alert
    from rules.model import Severity

    store = AlertStore(sqlite_url(tmp_path))
    alert, event = open_alert(
        rule_id="gate_forced_open",
        severity=Severity.MAJOR,
        device_id="g1",
        kind=Kind.GATE,
        areas={Level.GRID: "g", Level.VILLAGE: "v"},
        at_ms=1,
        value=None,
        detail="forced",
    )
    store.insert(alert, event)
    store.close()
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSENSE_MQTT_PORT", str(free_port()))  # no broker: stored, not sent

    listed = run_json(capsys, "alerts", "list", "--grid", "g", "--json")
    assert isinstance(listed, list) and [a["id"] for a in listed] == [alert.id]
    assert run_json(capsys, "alerts", "list", "--grid", "elsewhere", "--json") == []

    assert main(["alerts", "ack", alert.id, "--by", "li.na", "--note", "on my way"]) == 0
    out, err = capsys.readouterr()
    assert "acknowledged by li.na" in out and "not announced" in err
    assert main(["alerts", "ack", alert.id, "--by", "wang"]) == 1  # already acknowledged
    assert "already acknowledged by li.na" in capsys.readouterr().err
    # "auto" signs the rules' own resolves, which the engine does not hear (issue 14 F4).
    assert main(["alerts", "resolve", alert.id, "--by", " AUTO"]) == 1
    assert "reserved for the rules' own resolves" in capsys.readouterr().err
    assert run_json(capsys, "alerts", "list", "--state", "resolved", "--json") == []
    assert main(["alerts", "resolve", alert.id, "--by", "li.na"]) == 0
    capsys.readouterr()
    resolved = run_json(capsys, "alerts", "list", "--state", "resolved", "--json")
    assert isinstance(resolved, list) and resolved[0]["resolved_by"] == "li.na"
    assert main(["alerts", "ack", "A-nothing", "--by", "x"]) == 1


def test_the_alert_commands_use_the_database_url(
    url: str,  # noqa: F811  (SQLite and PostgreSQL, tests/unit/test_alert_store.py)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.alerts.store import AlertStore
    from ingest.ops.processes import free_port
    from tests.unit.test_alert_store import fire

    store = AlertStore(url)
    alert, _ = fire(store)
    store.close()
    data_dir = tmp_path / "elsewhere"
    monkeypatch.setenv("CITYSENSE_DATABASE_URL", url)
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CITYSENSE_MQTT_PORT", str(free_port()))  # no broker: stored, not sent
    listed = run_json(capsys, "alerts", "list", "--json")
    assert isinstance(listed, list) and [a["id"] for a in listed] == [alert.id]
    assert main(["alerts", "resolve", alert.id, "--by", "li.na"]) == 0
    capsys.readouterr()
    again = AlertStore(url)
    got = again.get(alert.id)
    again.close()
    assert got is not None and got.resolved_by == "li.na"
    assert not (data_dir / "alerts.sqlite3").exists()  # the URL's database, not the file
