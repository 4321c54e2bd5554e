"""Alert lines name the place, the device and the value in both languages."""

from pathlib import Path

from devices.kinds import Kind, Level
from devices.registry import load_registry
from rules.alerts import acknowledge, open_alert
from rules.messages import describe
from rules.model import Severity

REGISTRY = load_registry(Path(__file__).resolve().parents[2] / "config" / "registry.yaml")


def test_new_alert_names_place_device_and_value() -> None:
    device = next(d for d in REGISTRY.devices.values() if d.kind is Kind.RIVER)
    path = REGISTRY.device_path(device.id)
    areas = {a.level: a.id for a in path.areas}
    alert, opened = open_alert(
        rule_id="river_over_warning",
        severity=Severity.MAJOR,
        device_id=device.id,
        kind=Kind.RIVER,
        areas=areas,
        at_ms=1_795_000_000_000,
        value=211.75,
        detail="",
    )
    zh, en = describe(alert, opened, "River above warning level", "超警戒水位", REGISTRY)
    grid = REGISTRY.areas[areas[Level.GRID]]
    county = REGISTRY.areas[areas[Level.COUNTY]]
    assert zh.startswith("【重要告警·新告警】超警戒水位：")
    assert county.name in zh and grid.name in zh and device.name in zh and "211.75" in zh
    village = REGISTRY.areas[areas[Level.VILLAGE]]
    assert zh.count(village.name) == 1  # the grid's name already says which village
    assert en.startswith("[major · new alert] River above warning level: ")
    assert (county.name_en or "") in en and "211.75" in en and device.id in en

    acked, event = acknowledge(alert, "wang.wei", 1_795_000_060_000)
    zh, en = describe(acked, event, "River above warning level", "超警戒水位", REGISTRY)
    assert "已受理（wang.wei）" in zh and "acknowledged by wang.wei" in en


def test_every_action_has_words_in_both_languages() -> None:
    from rules.alerts import AlertAction, AlertEvent

    device = next(iter(REGISTRY.devices.values()))
    areas = {a.level: a.id for a in REGISTRY.device_path(device.id).areas}
    alert, _ = open_alert(
        rule_id="r",
        severity=Severity.INFO,
        device_id=device.id,
        kind=device.kind,
        areas=areas,
        at_ms=0,
        value=None,
        detail="",
    )
    for action in AlertAction:
        zh, en = describe(
            alert, AlertEvent(alert_id=alert.id, at_ms=0, action=action), "Rule", "规则", REGISTRY
        )
        assert zh and en and device.id in zh and device.id in en
