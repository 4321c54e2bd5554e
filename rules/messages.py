"""The human-readable lines that go with an alert, in Chinese and in English.

A grid worker reads these on a phone: they name the place (county down to grid), the device,
what happened and the value, so nobody has to look anything up to act.
"""

from __future__ import annotations

from devices.kinds import Level
from devices.registry import Registry
from rules.alerts import Alert, AlertAction, AlertEvent
from rules.model import Severity

_SEVERITY_ZH = {
    Severity.INFO: "提示",
    Severity.WARNING: "预警",
    Severity.MAJOR: "重要告警",
    Severity.CRITICAL: "紧急告警",
}
_ACTION_ZH = {
    AlertAction.OPENED: "新告警",
    AlertAction.REPEATED: "告警持续",
    AlertAction.ACKNOWLEDGED: "已受理",
    AlertAction.RESOLVED: "已解除",
    AlertAction.ESCALATED: "告警升级",
    AlertAction.FLAPPING: "告警反复",
}
_ACTION_EN = {
    AlertAction.OPENED: "new alert",
    AlertAction.REPEATED: "alert continues",
    AlertAction.ACKNOWLEDGED: "acknowledged",
    AlertAction.RESOLVED: "resolved",
    AlertAction.ESCALATED: "escalated",
    AlertAction.FLAPPING: "flapping",
}
# Where the place is named from: county down to grid (the city is the same for everyone).
_PLACE_LEVELS = (Level.COUNTY, Level.TOWNSHIP, Level.VILLAGE, Level.GRID)


def _value(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def _place(names: list[str]) -> list[str]:
    """Top-down names, dropping one the next already contains ("X社区", "X社区第一网格")."""
    out: list[str] = []
    for name in names:
        if out and name.startswith(out[-1]):
            out[-1] = name
        else:
            out.append(name)
    return out


def describe(
    alert: Alert, change: AlertEvent, rule_name: str, rule_name_zh: str, registry: Registry
) -> tuple[str, str]:
    """(Chinese, English) lines for ``change`` of ``alert``."""
    device = registry.devices.get(alert.device_id)
    areas = [registry.areas.get(alert.areas[lv]) for lv in _PLACE_LEVELS if lv in alert.areas]
    known = [a for a in areas if a is not None]
    place_zh = "".join(_place([a.name for a in known]))
    place_en = ", ".join(reversed(_place([a.name_en or a.name for a in known])))
    device_zh = device.name if device else alert.device_id
    device_en = (device.name_en or device.id) if device else alert.device_id
    value = _value(alert.value)
    who = f"（{change.actor}）" if change.actor else ""
    zh = (
        f"【{_SEVERITY_ZH[alert.severity]}·{_ACTION_ZH[change.action]}{who}】{rule_name_zh}："
        f"{place_zh} {device_zh}（{alert.device_id}）" + (f"，数值 {value}" if value else "") + "。"
    )
    by = f" by {change.actor}" if change.actor else ""
    en = (
        f"[{alert.severity.value} · {_ACTION_EN[change.action]}{by}] {rule_name}: "
        f"{device_en} ({alert.device_id}), {place_en}" + (f"; value {value}" if value else "") + "."
    )
    return zh, en
