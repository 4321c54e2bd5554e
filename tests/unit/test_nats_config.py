"""The NATS cluster's configuration (ingest/ops/nats.py), read back as the broker would."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest

from devices.credentials import (
    LOCAL_EXAMPLE_DEV_SECRET,
    device_password,
    gateway_password,
    gateway_user,
    worker_password,
)
from devices.partitions import partition_of
from devices.registry import Registry, load_registry
from ingest.ops import nats
from ingest.ops.brokerconfig import BrokerConfigError
from ingest.ops.processes import StackError
from ingest.people import load_workers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def users(registry: Registry) -> dict[str, dict]:  # type: ignore[type-arg]
    text = nats.users_conf(
        registry,
        load_workers(REPO / "config" / "workers.yaml", registry),
        dev_secret=LOCAL_EXAMPLE_DEV_SECRET,
        ingest_user="citysense-ingest",
        ingest_password="ingest-pw",
        partitions=16,
    )
    block = json.loads(text.split("authorization ", 1)[1])
    return {u["user"]: u for u in block["users"]}


def test_each_device_may_publish_only_into_its_own_partition(registry: Registry) -> None:
    found = users(registry)
    for d in registry.devices.values():
        if getattr(d, "protocol", None) is not None:
            assert d.id not in found  # a field station never speaks MQTT: no login in its name
            continue
        perms = found[d.id]["permissions"]
        p = partition_of(d.id, 16)
        assert perms == {
            "publish": {"allow": [f"iot.{p}.{d.kind.value}.{d.id}.>"]},
            "subscribe": {"deny": [">"]},
        }
        password = device_password(LOCAL_EXAMPLE_DEV_SECRET, d.id).encode()
        assert bcrypt.checkpw(password, found[d.id]["password"].encode())


def test_each_field_gateway_may_publish_only_its_stations_telemetry(registry: Registry) -> None:
    found = users(registry)
    for protocol in ("hj212", "sl651"):
        stations = sorted(registry.stations_of(protocol).values(), key=lambda d: d.id)
        assert stations, protocol
        user = found[gateway_user(protocol)]
        allowed = [f"iot.{partition_of(d.id, 16)}.river.{d.id}.telemetry" for d in stations]
        assert sorted(user["permissions"]["publish"]["allow"]) == sorted(allowed)
        assert user["permissions"]["subscribe"] == {"deny": [">"]}
        password = gateway_password(LOCAL_EXAMPLE_DEV_SECRET, protocol).encode()
        assert bcrypt.checkpw(password, user["password"].encode())


def test_the_service_and_grid_workers(registry: Registry) -> None:
    found = users(registry)
    assert found["citysense-ingest"]["permissions"] == {
        "publish": {"allow": ["alerts.>", "cases.>"]},
        "subscribe": {"allow": ["iot.>"]},
    }
    workers = load_workers(REPO / "config" / "workers.yaml", registry)
    w = workers[0]
    got = found[w.username]
    # As NATS maps MQTT topics: '/' → '.', and a '.' inside a level (li.na) → '//'.
    assert got["permissions"]["subscribe"]["allow"] == [
        ".".join(level.replace(".", "//") for level in t.split("/"))
        for t in (*w.alert_topics(registry), *w.case_topics(registry))
    ]
    assert (
        f"cases.person.{w.username.replace('.', '//')}" in got["permissions"]["subscribe"]["allow"]
    )
    assert got["permissions"]["publish"]["allow"] == []
    pw = worker_password(LOCAL_EXAMPLE_DEV_SECRET, w.username).encode()
    assert bcrypt.checkpw(pw, got["password"].encode())
    assert not any("ingest-pw" in json.dumps(u) for u in found.values())  # hashed only


def test_a_dotted_device_id_is_refused(registry: Registry) -> None:
    device = next(iter(registry.devices.values()))
    dotted = Registry(registry.areas.values(), [device.model_copy(update={"id": "gate.with.dots"})])
    with pytest.raises(BrokerConfigError, match=r"gate\.with\.dots"):
        nats.users_conf(
            dotted, [], dev_secret="s", ingest_user="i", ingest_password="p", partitions=4
        )


def test_node_config_and_port_plan(tmp_path: Path) -> None:
    plan = nats.plan_ports(tmp_path, 3, 21883)
    assert plan[0].mqtt == 21883
    ports = [v for p in plan for v in (p.mqtt, p.client, p.route, p.http)]
    assert len(set(ports)) == 12
    assert nats.plan_ports(tmp_path, 3, 21883) == plan  # kept: routes survive a restart
    conf = nats.node_conf(1, plan, tmp_path / "n2", 16, 60, tmp_path / "users.conf")
    assert "server_name: n2" in conf
    assert f"listen: 127.0.0.1:{plan[1].mqtt}" in conf
    # 16 partitions share 40,000 unacknowledged messages: 2,500 each.
    assert "stream_replicas: 3" in conf and "max_ack_pending: 2500" in conf
    assert nats.max_ack_pending(1) == 20_000
    # The sum stays under the consumer's pause (50,000) for every partition count allowed.
    assert all(p * nats.max_ack_pending(p) <= 45_000 for p in range(1, 1025))
    assert 'ack_wait: "60s"' in conf
    assert '"iot.*.*.*": "iot.{{partition(16,2)}}.{{wildcard(1)}}' in conf
    assert f"nats-route://127.0.0.1:{plan[0].route}" in conf
    assert f"nats-route://127.0.0.1:{plan[1].route}" not in conf  # not a route to itself
    single = nats.plan_ports(tmp_path / "one", 1, 21884)
    assert "cluster" not in nats.node_conf(0, single, tmp_path, 4, 60, tmp_path / "u.conf")
    with pytest.raises(StackError, match="majority"):
        nats.check_nodes(2)


def test_broker_config_writes_the_nats_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.cli import main

    monkeypatch.setenv("CITYSENSE_BROKER", "nats")
    monkeypatch.setenv("CITYSENSE_PARTITIONS", "4")
    assert main(["broker-config", "--out", str(tmp_path)]) == 0
    assert "4 partitions" in capsys.readouterr().out
    path = tmp_path / "users.conf"
    assert path.stat().st_mode & 0o777 == 0o600
    block = json.loads(path.read_text().split("authorization ", 1)[1])
    gate = next(u for u in block["users"] if u["user"] == "gate-sq-0001")
    p = partition_of("gate-sq-0001", 4)
    assert gate["permissions"]["publish"]["allow"] == [f"iot.{p}.gate.gate-sq-0001.>"]


def test_the_service_learns_the_other_nodes_and_tries_them_in_turn(tmp_path: Path) -> None:
    from ingest.mqtt.nodes import BrokerNodes
    from ingest.settings import Settings

    settings = Settings(broker="nats", data_dir=tmp_path, mqtt_port=21883)
    assert nats.with_cluster_nodes(settings) is settings  # no stack up here: as it is
    plan = nats.plan_ports(tmp_path / "nats", 3, 21883)
    found = nats.with_cluster_nodes(settings)
    assert found.mqtt_also == (f"127.0.0.1:{plan[1].mqtt}", f"127.0.0.1:{plan[2].mqtt}")
    told = settings.model_copy(update={"mqtt_also": ("10.0.0.2:1883",)})
    assert nats.with_cluster_nodes(told) is told  # what the operator set wins
    nodes = BrokerNodes(found)
    seen = []
    for _ in range(4):
        seen.append(nodes.current)
        nodes.failed()
    assert [port for _, port in seen] == [21883, plan[1].mqtt, plan[2].mqtt, 21883]
    with pytest.raises(ValueError, match="not host:port"):
        Settings(mqtt_also="127.0.0.1")  # type: ignore[arg-type]
    assert Settings(mqtt_also="a:1, b:2").mqtt_also == ("a:1", "b:2")  # type: ignore[arg-type]
