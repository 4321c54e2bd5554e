"""``cluster status`` (issue 16): the pure view of leases and members, the CLI on a real
SQLite database, and ``GET /cluster`` (operators only; 404 without a cluster)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from devices.registry import parse_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenStore
from ingest.cli import main
from ingest.cluster.leases import Lease, Leases
from ingest.cluster.status import cluster_status, partition_ranges
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

P = 8
LEASE_MS = 6_000
T0 = 1_800_000_000_000


def test_alive_and_gone_workers_with_what_they_hold() -> None:
    leases = [
        *(Lease(p, "a", 1, T0 + 5_000, read=10 * p, read_ms=T0 - p) for p in range(4)),
        *(Lease(p, "b", 2, T0 + 1_000, read=1, read_ms=T0 - 100) for p in range(4, 6)),
    ]
    members = {"a": T0 - 1_000, "b": T0 - 5_000, "c": T0 - LEASE_MS}  # c: exactly one lease ago
    status = cluster_status(leases, members, P, LEASE_MS, T0)
    assert [(w.worker, w.alive, w.partitions) for w in status.workers] == [
        ("a", True, [0, 1, 2, 3]),
        ("b", True, [4, 5]),
        ("c", False, []),  # gone: as Leases.beat counts it, a beat a whole lease ago is stale
    ]
    a = status.workers[0]
    assert (a.read, a.read_ms) == (0 + 10 + 20 + 30, T0)  # summed; the newest read
    assert status.workers[2].read_ms == 0
    assert status.unowned == [6, 7]  # never leased
    assert status.partition_count == P and status.lease_s == 6.0 and status.now_ms == T0
    never = status.partitions[7]
    assert (never.owner, never.epoch, never.held, never.read) == (None, 0, False, 0)


def test_an_expired_lease_shows_as_unowned_but_keeps_its_epoch_and_progress() -> None:
    leases = [Lease(0, "a", 3, T0, read=42, read_ms=T0 - 9_000), Lease(1, "a", 3, T0 + 1)]
    status = cluster_status(leases, {"a": T0 - 7_000}, 2, LEASE_MS, T0)
    expired, held = status.partitions
    assert (expired.owner, expired.held, expired.epoch, expired.read) == (None, False, 3, 42)
    assert (held.owner, held.held) == ("a", True)
    assert status.unowned == [0]
    # a stopped beating but still holds partition 1 for 1 ms: shown as gone, holding it
    [a] = status.workers
    assert (a.alive, a.partitions) == (False, [1])


def test_a_holder_missing_from_the_members_is_still_shown() -> None:
    status = cluster_status([Lease(0, "ghost", 1, T0 + 10)], {}, 1, LEASE_MS, T0)
    [ghost] = status.workers
    assert (ghost.worker, ghost.seen_ms, ghost.alive, ghost.partitions) == ("ghost", 0, False, [0])
    assert status.unowned == []


@pytest.mark.parametrize(
    ("partitions", "text"),
    [
        ([], "-"),
        ([3], "3"),
        ([0, 1, 2, 3, 4, 5, 6, 7], "0-7"),
        ([9, 0, 1, 2, 5, 7, 8], "0-2,5,7-9"),
        ([4, 4, 5], "4-5"),
    ],
)
def test_partition_ranges(partitions: list[int], text: str) -> None:
    assert partition_ranges(partitions) == text


def now_ms() -> int:
    return int(time.time() * 1000)


def two_workers(url: str) -> None:
    """a holds 0-3 and has read some; b beat once and has nothing yet; 4-7 free."""
    leases = Leases(url, P, LEASE_MS)
    try:
        now = now_ms()
        held = leases.beat("a", now)
        assert sorted(held) == list(range(P))
        leases.beat("b", now + 1)
        # a sees b: hands back its surplus (4-7); b takes them only at its next beat
        held = leases.beat("a", now + 2, progress={p: (100 + p, now - 1_500) for p in range(4)})
        assert sorted(held) == [0, 1, 2, 3]
    finally:
        leases.close()


def cluster_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CITYSENSE_BROKER", "nats")
    monkeypatch.setenv("CITYSENSE_PARTITIONS", str(P))
    monkeypatch.setenv("CITYSENSE_LEASE_S", str(LEASE_MS / 1000))


def test_cli_cluster_status_json_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    two_workers(sqlite_url(tmp_path))
    cluster_env(monkeypatch, tmp_path)
    assert main(["cluster", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["broker"] == "nats" and status["partition_count"] == P
    by_name = {w["worker"]: w for w in status["workers"]}
    assert by_name["a"]["partitions"] == [0, 1, 2, 3] and by_name["a"]["alive"]
    assert by_name["a"]["read"] == 100 + 101 + 102 + 103
    assert by_name["b"]["partitions"] == [] and by_name["b"]["alive"]
    assert status["unowned"] == [4, 5, 6, 7]
    assert main(["cluster", "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "8 partitions, lease 6 s, 2 of 2 workers alive"
    a_line = next(line for line in out if line.startswith("a "))
    assert a_line.split()[:4] == ["a", "alive", "0-3", "406"] and a_line.endswith("s ago")
    b_line = next(line for line in out if line.startswith("b "))
    assert b_line.split() == ["b", "alive", "-", "0", "-"]
    assert out[-1] == "unowned: 4-7"


def test_cli_cluster_status_uses_the_database_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'cluster.sqlite3'}"
    two_workers(url)
    data_dir = tmp_path / "elsewhere"
    cluster_env(monkeypatch, data_dir)
    monkeypatch.setenv("CITYSENSE_DATABASE_URL", url)
    assert main(["cluster", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {w["worker"] for w in status["workers"]} == {"a", "b"}
    assert not (data_dir / "alerts.sqlite3").exists()  # the URL's database, not the file


def test_cli_cluster_status_without_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSENSE_BROKER", "mosquitto")
    assert main(["cluster", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"broker": "mosquitto", "cluster": None}
    assert main(["cluster", "status"]) == 0
    assert "no cluster" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing opened, nothing created


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiContext, httpx.AsyncClient, str, str]]:
    registry = parse_registry({"areas": SMALL_AREAS, "devices": SMALL_DEVICES})
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, ["g"])
    two_workers(sqlite_url(tmp_path))
    leases = Leases(sqlite_url(tmp_path), P, LEASE_MS)
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path),
            registry=registry,
            rules=parse_rules({"rules": []}, "<test>", registry),
            rules_path=tmp_path / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp_path)),
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
            leases=leases,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield ctx, c, operator, worker
    leases.close()


async def test_get_cluster_shows_the_owners_to_operators_only(
    api: tuple[ApiContext, httpx.AsyncClient, str, str],
) -> None:
    ctx, c, operator, worker = api
    r = await c.get("/cluster", headers={"Authorization": f"Bearer {operator}"})
    assert r.status_code == 200
    body = r.json()
    owners = {p["partition"]: p["owner"] for p in body["partitions"]}
    assert owners == {0: "a", 1: "a", 2: "a", 3: "a", 4: None, 5: None, 6: None, 7: None}
    assert body["unowned"] == [4, 5, 6, 7]
    assert [w["worker"] for w in body["workers"]] == ["a", "b"]
    # A grid worker is told the path does not exist for it, as for every operator route.
    r = await c.get("/cluster", headers={"Authorization": f"Bearer {worker}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await c.get("/cluster")).status_code == 401
    ctx.leases = None  # a service with mosquitto: no cluster
    r = await c.get("/cluster", headers={"Authorization": f"Bearer {operator}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_cluster"
