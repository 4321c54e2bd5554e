"""Options, configuration, the report, and synthetic registries."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devices.kinds import Channel, Kind, Level
from devices.registry import dump_registry, load_registry
from simulator import (
    ConfigError,
    MqttTarget,
    SentReport,
    SimulationConfig,
    SimulatorError,
    add_arguments,
    config_from_args,
    dry_run,
    registry_for_run,
    synthetic_registry,
    write_registry,
)

START_MS = int(datetime(2024, 7, 1, 8, tzinfo=timezone(timedelta(hours=8))).timestamp() * 1000)


def parse(*argv: str) -> SimulationConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults() -> None:
    config = parse()
    assert config == SimulationConfig()
    assert config.devices is None and config.duration == 0 and config.until_s is None
    assert config.kinds == (Kind.GATE, Kind.RIVER, Kind.ROAD)
    assert not config.scenarios and not config.as_json


def test_every_option() -> None:
    config = parse(
        "--devices", "12", "--rate", "50", "--duration", "30",
        "--scenario", "flood,pollution", "--scenario", "silent",
        "--scenario-at", "3", "--scenario-device", "flood=syn-river-0002,syn-gate-0001",
        "--kinds", "river,gate", "--seed", "9", "--synthetic", "40",
        "--write-registry", "out/reg.yaml", "--json",
    )  # fmt: skip
    assert config.devices == 12 and config.rate == 50 and config.duration == 30
    assert config.scenarios == ("flood", "pollution", "silent")
    assert config.scenario_at == 3 and config.scenario_start_s == 3
    assert config.scenario_device == {"flood": "syn-river-0002", "*": "syn-gate-0001"}
    assert config.kinds == (Kind.RIVER, Kind.GATE)
    assert config.seed == 9 and config.synthetic == 40
    assert config.write_registry == Path("out/reg.yaml") and config.as_json


def test_bad_options_are_refused() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--kinds", "gate,boat"])
    with pytest.raises(ConfigError, match=r"^scenarios: unknown scenario\(s\) meteor; choose from"):
        parse("--scenario", "meteor")
    with pytest.raises(ConfigError, match=r"^rate: Input should be greater than 0$"):
        parse("--rate", "0")
    with pytest.raises(SimulatorError, match="not asked for"):
        parse("--scenario", "flood", "--scenario-device", "accident=syn-road-0001")


def test_mqtt_target_hides_the_password() -> None:
    target = MqttTarget(host="broker", port=1884, username="sim", password="s3cret")
    assert "s3cret" not in repr(target)


def test_report_counts_per_kind_and_channel_and_prints() -> None:
    registry = synthetic_registry(6, seed=1)
    config = SimulationConfig(rate=6.0, duration=20.0, scenarios=("accident",), scenario_at=2)
    report = SentReport(devices=6, rate=6.0, duration_s=20.0, elapsed_s=20.0)
    sent = [m for _, m in dry_run(config, registry, START_MS)]
    for message in sent:
        report.record(message)
    assert report.total == len(sent)
    for kind in Kind:
        for channel in Channel:
            expected = sum(m.kind is kind and m.channel is channel for m in sent)
            assert report.count(kind, channel) == expected
    assert report.count(channel=Channel.STATUS) == 12
    assert report.last_seq == {
        d: max(m.payload.seq or 0 for m in sent if m.device_id == d) for d in registry.devices
    }
    assert report.achieved_rate == pytest.approx(6.0, rel=0.15)

    data = json.loads(report.to_json())
    assert data["total"] == len(sent)
    assert data["counts"]["river"]["telemetry"] == report.count(Kind.RIVER, Channel.TELEMETRY)
    assert sum(data["by_kind"].values()) == len(sent)
    assert data["last_seq"]["syn-gate-0001"] == report.last_seq["syn-gate-0001"]

    table = report.table()
    assert "telemetry" in table and "river" in table and f"{len(sent)}" in table
    assert "last seq syn-road-0002" in table


def test_report_table_summarises_many_devices() -> None:
    report = SentReport(last_seq={f"d{i}": i for i in range(1, 100)})
    assert "last seq over 99 devices: 1..99" in report.table()


def test_synthetic_registry_shape() -> None:
    registry = synthetic_registry(30, seed=1)
    ids = list(registry.devices)
    assert ids[:4] == ["syn-gate-0001", "syn-river-0001", "syn-road-0001", "syn-gate-0002"]
    assert sum(d.kind is Kind.RIVER for d in registry.devices.values()) == 10
    levels = [a.level for a in registry.areas.values()]
    assert levels.count(Level.COUNTY) == 2 and levels.count(Level.GRID) == 16
    for device in registry.devices.values():
        assert device.report_interval_s == 60
        path = registry.device_path(device.id)
        assert set(path.tags()) == {"grid", "village", "township", "county"}
    only_roads = synthetic_registry(5, [Kind.ROAD], seed=1)
    assert list(only_roads.devices) == [f"syn-road-000{i}" for i in range(1, 6)]
    assert (
        synthetic_registry(12, seed=4).devices.keys()
        == synthetic_registry(12, seed=4).devices.keys()
    )


def test_synthetic_registry_round_trips_through_yaml(tmp_path: Path) -> None:
    registry = synthetic_registry(25, seed=3)
    path = tmp_path / "nested" / "registry.yaml"
    write_registry(path, registry)
    assert "资江" in path.read_text(encoding="utf-8") or "邵水" in path.read_text(encoding="utf-8")
    assert dump_registry(load_registry(path)) == dump_registry(registry)


def test_registry_for_run(tmp_path: Path) -> None:
    path = tmp_path / "syn.yaml"
    config = SimulationConfig(synthetic=7, kinds=(Kind.GATE,), write_registry=path)

    def never() -> object:
        raise AssertionError("the configured registry is not loaded for a synthetic run")

    registry = registry_for_run(config, never)  # type: ignore[arg-type]
    assert len(registry.devices) == 7 and path.exists()
    loaded = registry_for_run(SimulationConfig(), lambda: registry)
    assert loaded is registry
