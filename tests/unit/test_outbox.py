"""The alert publisher against a failing outbox table: it must never die of the store."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.alerts.outbox import MqttOutbox
from ingest.settings import Settings


class FlakyTable:
    """The store's outbox: the first read and the first delete fail (locked, disk full)."""

    def __init__(self) -> None:
        self.rows = [(i, f"alerts/grid/g{i}", b"x") for i in range(1, 4)]
        self.read_failures = 1
        self.delete_failures = 1

    def pending_announcements(self, limit: int = 500) -> list[tuple[int, str, bytes]]:
        if self.read_failures:
            self.read_failures -= 1
            raise OSError("database is locked")
        return self.rows[:limit]

    def sent_announcements(self, ids: Sequence[int]) -> None:
        if self.delete_failures:
            self.delete_failures -= 1
            raise OSError("disk I/O error")
        self.rows = [r for r in self.rows if r[0] not in set(ids)]


class Client:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.sent.append(topic)


async def test_a_failing_outbox_table_is_retried_not_fatal() -> None:
    table, client = FlakyTable(), Client()
    outbox = MqttOutbox(Settings(), "t", source=table)
    assert await outbox._send_outbox(client) == 0  # type: ignore[arg-type]  # read failed
    assert await outbox._send_outbox(client) == 3  # type: ignore[arg-type]  # delete failed
    assert len(table.rows) == 3  # ... so they are still there: at least once
    assert await outbox._send_outbox(client) == 3  # type: ignore[arg-type]
    assert table.rows == [] and len(client.sent) == 6
