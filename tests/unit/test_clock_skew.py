"""One reading stamped minutes ahead must not hide the readings after it (issue 14 item 3).

A river station whose clock jumps 4 minutes ahead for one reading (accepted: the decoder
takes stamps up to 300 s ahead), then reports correctly every minute; the level breaks the
guarantee level (214.0 m) at +2 min and stays there. Each rule ignores readings older than
the newest it has seen, so on ec1dc14 the readings of +1 to +4 min were ignored and the alert
opened late. Now a stamp more than ``AHEAD_TOLERANCE_S`` past its arrival is judged as of its
arrival (``Engine.observe(..., not_after_ms)``, passed by ``Alerting.observe``).

A unit test on ``Alerting`` with a real ``AlertStore`` (SQLite in tmp_path): the real stack
would need eight minutes of wall time for the same readings. Without the clamp — a tolerance
so large it never applies, which is how ec1dc14 judged — the same run opens late, so the test
shows the difference on the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Channel
from ingest.alerts.alerting import Alerting
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.intake.batcher import Batcher
from ingest.intake.decode import Decoded, Decoder
from rules.loader import parse_rules
from tests.unit.test_alerting_trust import WARNING
from tests.unit.test_pipeline import Outbox
from tests.unit.test_rules_support import MINUTE, T0, city

TOPIC = "iot/river/r1/telemetry"  # r1: warning 211.5 m, guarantee 213.5 m
DELAY_MS = 300  # each message's way from the device to us
NEVER_MS = 10**12  # a tolerance no stamp is ever past: judged on the stamp as sent (ec1dc14)


def warning_rule(hold: str | None) -> dict[str, Any]:
    return WARNING if hold is None else {**WARNING, "for": hold}


def readings() -> list[tuple[int, int, float]]:
    """(stamp, arrival, level): one stamped 4 min ahead, then one a minute, on time."""
    out = [(T0 + 4 * MINUTE, T0 + DELAY_MS, 210.0)]
    for minute in range(1, 9):
        out.append(
            (T0 + minute * MINUTE, T0 + minute * MINUTE + DELAY_MS, 214.0 if minute >= 2 else 210.0)
        )
    return out


async def opened_at(tmp_path: Path, hold: str | None, **kw: Any) -> list[int]:
    """Feed the readings through the decoder and ``Alerting``; the alerts' opening times."""
    registry = city()
    rules = parse_rules({"rules": [warning_rule(hold)]}, "<test>", registry)
    store = AlertStore(sqlite_url(tmp_path))
    a = Alerting(rules, registry, store, Outbox(), Batcher(1000, 60), **kw)  # type: ignore[arg-type]
    decoder = Decoder(registry, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10)
    for seq, (stamp, arrival, level) in enumerate(readings()):
        payload = json.dumps({"ts": stamp, "seq": seq, "water_level_m": level}).encode()
        decoded = decoder.decode(TOPIC, payload, arrival)
        assert isinstance(decoded, Decoded), decoded  # 4 min ahead is inside the window
        a.take(a.observe(decoded.device, Channel.TELEMETRY, decoded.message, stamp, arrival))
        await a._store_round()
    opened = [alert.opened_ms for alert in store.open_alerts()]
    store.close()
    return opened


@pytest.mark.parametrize(
    ("hold", "on_time", "late"),
    [
        (None, 2, 5),  # opens on the first reading above: +2 min (ec1dc14: +5, after the +4 stamp)
        ("2m", 4, 7),  # `for: 2m` from +2 min: +4 min (ec1dc14: +7, as the issue reproduced)
    ],
)
async def test_a_reading_stamped_four_minutes_ahead_does_not_delay_the_breach(
    tmp_path: Path, hold: str | None, on_time: int, late: int
) -> None:
    assert await opened_at(tmp_path / "now", hold) == [T0 + on_time * MINUTE]
    # The same run judged on the stamps as sent, as ec1dc14 did: the alert opens late.
    unclamped = await opened_at(tmp_path / "old", hold, ahead_tolerance_s=NEVER_MS / 1000)
    assert unclamped == [T0 + late * MINUTE]
