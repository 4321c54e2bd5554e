"""Broker credentials, workers file, generated password/ACL/listener files and local TLS."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from devices.credentials import (
    LOCAL_EXAMPLE_DEV_SECRET,
    LOCAL_EXAMPLE_INGEST_PASSWORD,
    device_password,
    worker_password,
)
from devices.kinds import Level
from devices.registry import Registry, load_registry, parse_registry
from ingest.cli import main
from ingest.ops import stack
from ingest.ops.brokerconfig import (
    BrokerConfigError,
    BrokerFiles,
    find_dynsec_plugin,
    write_broker_files,
)
from ingest.ops.processes import free_port
from ingest.ops.tls import RENEW_BEFORE, SERVER_DAYS, ensure_local_tls
from ingest.people import Person, Post, WorkersError, load_workers, parse_workers
from ingest.settings import Settings
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

REPO = Path(__file__).resolve().parents[2]
SECRET = b"unit-test-secret"


def small_registry() -> Registry:
    areas = [*SMALL_AREAS, {"id": "g2", "name": "网格二", "level": "grid", "parent": "v"}]
    return parse_registry({"areas": areas, "devices": SMALL_DEVICES}, "small.yaml")


# --- derived passwords ---------------------------------------------------------------------


def test_device_password_known_answer() -> None:
    # Computed once with `printf %s gate-sq-0001 | openssl dgst -sha256 -hmac KEY -binary |
    # base64`: standard base64, so '+' and '/' appear and '=' pads.
    key = "citysense-known-answer-key"
    assert device_password(key, "gate-sq-0001") == "6eCowgjVX9lFSHQnnoCUYjlsxZgk+j3v8h/FR4XNOis="
    assert worker_password(key, "li.na") == "70GhT6IDE6qYgAzwetXDlqxc9x9yXcO0exlsceq45OU="


def test_derivation_is_hmac_sha256_in_standard_base64() -> None:
    for secret in (b"\x00\xffbinary", "文字 secret"):
        key = secret.encode() if isinstance(secret, str) else secret
        digest = hmac.new(key, b"river-zj-0001", hashlib.sha256).digest()
        assert device_password(secret, "river-zj-0001") == base64.b64encode(digest).decode()
        assert device_password(key, "river-zj-0001") == device_password(secret, "river-zj-0001")
        worker = hmac.new(key, b"worker:li.na", hashlib.sha256).digest()
        assert worker_password(secret, "li.na") == base64.b64encode(worker).decode()


def test_worker_and_device_passwords_differ_for_one_name() -> None:
    assert worker_password(SECRET, "x1") != device_password(SECRET, "x1")
    assert device_password(SECRET, "a") != device_password(b"other", "a")


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        device_password(b"", "a")


# --- the workers file ----------------------------------------------------------------------


def test_example_workers_load_at_several_levels() -> None:
    registry = load_registry(REPO / "config" / "registry.yaml")
    workers = load_workers(REPO / "config" / "workers.yaml", registry)
    grid_workers = [w for w in workers if w.role is Post.GRID_WORKER]
    assert len(grid_workers) >= 6
    assert all(1 <= len(w.areas) <= 2 for w in grid_workers)
    levels = {lv for w in workers for lv in w.levels(registry)}
    assert {Level.GRID, Level.VILLAGE, Level.TOWNSHIP} <= levels
    li_na = next(w for w in workers if w.username == "li.na")
    assert li_na.alert_topics(registry) == [
        "alerts/grid/430502001001-01",
        "alerts/grid/430502001001-02",
    ]


def worker_problems(data: Any) -> list[str]:
    with pytest.raises(WorkersError) as raised:
        parse_workers(data, small_registry(), "workers.yaml")
    return [str(p) for p in raised.value.problems]


OK = {"username": "li.na", "name": "李娜", "areas": ["g"]}


def test_an_unknown_area_is_named() -> None:
    found = worker_problems(
        {"workers": [OK, {**OK, "username": "wang.fang", "areas": ["g", "zz"]}]}
    )
    assert found == ["workers.yaml: workers[1] (username=wang.fang): areas.1: no area 'zz'"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**OK, "extra": 1}, "workers[1] (username=li.na): extra: Extra inputs are not permitted"),
        ({**OK, "areas": []}, "workers[1] (username=li.na): (entry): Value error, a grid_worker"),
        ({**OK, "username": "Li Na"}, "workers[1] (username=Li Na): username: String should"),
        ({**OK, "username": "a:b"}, "workers[1] (username=a:b): username: String should"),
        ({**OK, "username": "g1"}, "workers[1] (username=g1): username: is also a device id"),
        ({**OK, "areas": ["g", "g"]}, "workers[1] (username=li.na): areas.1: g is listed twice"),
        ({"name": "x", "areas": ["g"]}, "workers[1]: username: Field required"),
    ],
)
def test_bad_entries_are_named(entry: dict[str, Any], expected: str) -> None:
    other = {**OK, "username": "chen.jing"}
    found = worker_problems({"workers": [other, entry]})
    assert any(p.startswith(f"workers.yaml: {expected}") for p in found), found


def test_duplicate_usernames_and_bad_sections_are_named() -> None:
    assert worker_problems({"workers": [OK, OK]}) == [
        "workers.yaml: workers[1] (username=li.na): username: duplicate username"
    ]
    assert worker_problems({"workers": [OK], "people": []}) == [
        "workers.yaml: (top): people: unknown section"
    ]
    assert worker_problems({"workers": {"li.na": OK}}) == [
        "workers.yaml: workers: (section): must be a list"
    ]


# --- the generated files -------------------------------------------------------------------


def small_workers(registry: Registry) -> tuple[Person, ...]:
    data = {
        "workers": [
            {"username": "li.na", "name": "李娜", "areas": ["g", "g2"]},
            {"username": "zhao.lei", "name": "赵磊", "areas": ["v"]},
        ]
    }
    return parse_workers(data, registry, "workers.yaml")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> BrokerFiles:
    registry = small_registry()
    return write_broker_files(
        tmp_path_factory.mktemp("broker"),
        registry,
        small_workers(registry),
        dev_secret=SECRET,
        ingest_password="ingest-secret-pw",
        port=11883,
        tls_port=18883,
    )


def acl_blocks(text: str) -> dict[str, list[str]]:
    """``user`` → its rule lines; rules before any ``user`` line go under ``""``."""
    blocks: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("user "):
            current = line.removeprefix("user ")
            assert current not in blocks, f"two blocks for {current}"
            blocks[current] = []
        else:
            blocks[current].append(line)
    return blocks


def test_acl_has_one_block_per_user_as_the_issue_says(generated: BrokerFiles) -> None:
    blocks = acl_blocks(generated.acl.read_text())
    assert blocks == {
        "": [],  # a rule here would apply to anonymous clients
        "citysense-ingest": ["topic read iot/#", "topic write alerts/#", "topic write cases/#"],
        "li.na": [
            "topic read alerts/grid/g",
            "topic read alerts/grid/g2",
            "topic read cases/grid/g",
            "topic read cases/grid/g2",
            "topic read cases/person/li.na",
        ],
        "zhao.lei": [
            "topic read alerts/village/v",
            "topic read cases/village/v",
            "topic read cases/person/zhao.lei",
        ],
        "r1": ["topic write iot/river/r1/#"],
        "g1": ["topic write iot/gate/g1/#"],
        "d1": ["topic write iot/road/d1/#"],
    }
    assert generated.users == 6


def _pbkdf2_matches(hashed: str, password: str) -> bool:
    """Check a Mosquitto ``$7$`` entry: ``$7$iterations$salt$hash``, PBKDF2-HMAC-SHA512."""
    _, seven, iterations, salt, digest = hashed.split("$")
    assert seven == "7"
    derived = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations), 64
    )
    return hmac.compare_digest(derived, base64.b64decode(digest))


def test_password_file_holds_hashes_of_the_derived_passwords(generated: BrokerFiles) -> None:
    assert stat.S_IMODE(generated.passwords.stat().st_mode) == 0o600
    entries = dict(line.split(":", 1) for line in generated.passwords.read_text().splitlines())
    expected = {
        "citysense-ingest": "ingest-secret-pw",
        "li.na": worker_password(SECRET, "li.na"),
        "zhao.lei": worker_password(SECRET, "zhao.lei"),
        "r1": device_password(SECRET, "r1"),
        "g1": device_password(SECRET, "g1"),
        "d1": device_password(SECRET, "d1"),
    }
    assert set(entries) == set(expected)
    for user, password in expected.items():
        assert entries[user].startswith("$7$")
        assert _pbkdf2_matches(entries[user], password), user
        assert not _pbkdf2_matches(entries[user], password + "x")


def test_no_plaintext_password_is_left_anywhere(generated: BrokerFiles) -> None:
    plaintexts = [
        "ingest-secret-pw",
        device_password(SECRET, "r1"),
        worker_password(SECRET, "li.na"),
    ]
    files = [p for p in generated.directory.rglob("*") if p.is_file()]
    assert {p.relative_to(generated.directory).as_posix() for p in files} == {
        "passwords",
        "acl",
        "listeners.conf",
        "clientids.json",
        "tls/ca.crt",
        "tls/ca.key",
        "tls/server.crt",
        "tls/server.key",
    }  # no temporary plaintext file or directory stays behind
    for path in files:
        text = path.read_bytes()
        assert not any(p.encode() in text for p in plaintexts), path


def test_listeners_conf_closes_anonymous_access_on_both_listeners(generated: BrokerFiles) -> None:
    lines = [
        line
        for line in generated.listeners.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    tls = generated.tls
    assert lines == [
        "allow_anonymous false",
        f"password_file {generated.passwords}",
        f"acl_file {generated.acl}",
        f"plugin {find_dynsec_plugin()}",
        f"plugin_opt_config_file {generated.clientids}",
        "listener 11883 127.0.0.1",
        "listener 18883 127.0.0.1",
        f"cafile {tls.ca_cert}",
        f"certfile {tls.server_cert}",
        f"keyfile {tls.server_key}",
        "tls_version tlsv1.2",
        "require_certificate false",
    ]
    assert all(Path(p).is_absolute() for p in (generated.passwords, tls.server_key))
    assert "message_size_limit" not in "\n".join(lines)  # deprecated: max_packet_size instead


def test_every_device_and_worker_is_bound_to_its_own_client_id(generated: BrokerFiles) -> None:
    """Issue 13 item 1 (the attack itself is refused on a real broker in
    test_broker_security.py). ec1dc14 wrote no client-id binding at all."""
    config = json.loads(generated.clientids.read_text())
    registry = small_registry()
    bound = {c["username"]: c["clientid"] for c in config["clients"]}
    expected = [*(w.username for w in small_workers(registry)), *registry.devices]
    assert bound == {u: u for u in expected}
    # No passwords or roles: the plugin defers those to the password file and the ACL.
    assert all(
        set(c) == {"username", "clientid", "roles"} and not c["roles"] for c in config["clients"]
    )
    assert not any(config["defaultACLAccess"].values())
    assert "citysense-ingest" not in bound  # the service picks its client ids freely


def test_the_tls_listener_binds_the_address_asked_for(tmp_path: Path) -> None:
    """ec1dc14 bound the TLS listener to 127.0.0.1 whatever the settings said."""
    registry = small_registry()
    files = write_broker_files(
        tmp_path,
        registry,
        small_workers(registry),
        dev_secret=SECRET,
        ingest_password="pw",
        port=11883,
        tls_port=18883,
        tls_host="0.0.0.0",
    )
    text = files.listeners.read_text()
    assert "listener 18883 0.0.0.0\n" in text
    assert "listener 11883 127.0.0.1\n" in text  # the plain one stays on loopback


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ingest_user": "g1"}, "also a device or a worker"),
        ({"ingest_user": "li.na"}, "also a device or a worker"),
        ({"ingest_user": "bad user"}, "does not match"),
        ({"ingest_password": ""}, "empty"),
        ({"tls_port": 1883}, "both use port 1883"),
    ],
)
def test_inconsistent_arguments_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    registry = small_registry()
    kwargs: dict[str, Any] = {"dev_secret": SECRET, "ingest_password": "pw", "port": 1883}
    with pytest.raises(BrokerConfigError, match=message):
        write_broker_files(tmp_path, registry, small_workers(registry), **{**kwargs, **change})
    assert not (tmp_path / "passwords").exists()


# --- local TLS -----------------------------------------------------------------------------


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_local_tls_makes_a_ca_and_a_localhost_certificate(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls")
    assert files.ca_key is not None
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca, server = _cert(files.ca_cert), _cert(files.server_cert)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def test_local_tls_is_reused_while_valid_and_renewed_near_its_end(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path)
    before = {p: p.read_bytes() for p in (files.ca_cert, files.server_cert, files.server_key)}
    ensure_local_tls(tmp_path)
    assert {p: p.read_bytes() for p in before} == before

    # Close to the server certificate's end: a new one, from the same CA.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=SERVER_DAYS) - RENEW_BEFORE
    ensure_local_tls(tmp_path, now=later)
    assert files.ca_cert.read_bytes() == before[files.ca_cert]
    renewed = _cert(files.server_cert)
    assert files.server_cert.read_bytes() != before[files.server_cert]
    renewed.verify_directly_issued_by(_cert(files.ca_cert))
    assert renewed.not_valid_after_utc > later + RENEW_BEFORE

    # A name the certificate lacks, or a lost key: reissued as well.
    current = files.server_cert.read_bytes()
    ensure_local_tls(tmp_path, dns_names=("localhost", "broker.local"), now=later)
    assert files.server_cert.read_bytes() != current
    files.server_key.unlink()
    ensure_local_tls(tmp_path, now=later)
    assert files.server_key.exists()
    assert _cert(files.server_cert).public_key() != renewed.public_key()


def test_a_ca_near_its_end_is_replaced_with_its_certificates(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path)
    old_ca = files.ca_cert.read_bytes()
    much_later = _cert(files.ca_cert).not_valid_after_utc - dt.timedelta(days=1)
    ensure_local_tls(tmp_path, now=much_later)
    assert files.ca_cert.read_bytes() != old_ca
    _cert(files.server_cert).verify_directly_issued_by(_cert(files.ca_cert))


# --- the CLI -------------------------------------------------------------------------------


def test_cli_warns_when_it_falls_back_to_the_local_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CITYSENSE_DEV_SECRET", raising=False)
    monkeypatch.delenv("CITYSENSE_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CITYSENSE_MQTT_USERNAME", raising=False)
    args = ["--registry", str(REPO / "config" / "registry.yaml")]
    args += ["--workers", str(REPO / "config" / "workers.yaml")]
    assert main(["broker-config", "--out", str(tmp_path), "--tls-port", "18884", *args]) == 0
    err = capsys.readouterr().err
    assert "CITYSENSE_DEV_SECRET is not set" in err and "local use only" in err
    assert "CITYSENSE_MQTT_PASSWORD is not set" in err
    entries = dict(line.split(":", 1) for line in (tmp_path / "passwords").read_text().splitlines())
    expected = device_password(LOCAL_EXAMPLE_DEV_SECRET, "gate-sq-0001")
    assert _pbkdf2_matches(entries["gate-sq-0001"], expected)
    assert _pbkdf2_matches(entries["citysense-ingest"], LOCAL_EXAMPLE_INGEST_PASSWORD)
    assert "listener 18884 127.0.0.1" in (tmp_path / "listeners.conf").read_text()


def test_cli_uses_the_secrets_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSENSE_DEV_SECRET", "from-the-environment")
    monkeypatch.setenv("CITYSENSE_MQTT_PASSWORD", "ingest-from-env")
    monkeypatch.setenv("CITYSENSE_MQTT_USERNAME", "ingest-2")
    monkeypatch.setenv("CITYSENSE_MQTT_PORT", "21883")
    args = ["--registry", str(REPO / "config" / "registry.yaml")]
    args += ["--workers", str(REPO / "config" / "workers.yaml")]
    assert main(["broker-config", "--out", str(tmp_path), *args]) == 0
    assert "warning" not in capsys.readouterr().err
    entries = dict(line.split(":", 1) for line in (tmp_path / "passwords").read_text().splitlines())
    assert _pbkdf2_matches(entries["li.na"], worker_password("from-the-environment", "li.na"))
    assert _pbkdf2_matches(entries["ingest-2"], "ingest-from-env")
    assert "listener 21883 127.0.0.1" in (tmp_path / "listeners.conf").read_text()


def test_cli_takes_the_workers_file_and_tls_port_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: `broker-config` ignored CITYSENSE_WORKERS and CITYSENSE_MQTT_TLS_PORT (it
    used config/workers.yaml and 8883) while `stack up` honoured them."""
    workers = tmp_path / "my-workers.yaml"
    workers.write_text(
        "workers:\n- username: wang.fang\n  name: 王芳\n  areas: ['430502001001-01']\n"
    )
    monkeypatch.setenv("CITYSENSE_WORKERS", str(workers))
    monkeypatch.setenv("CITYSENSE_MQTT_TLS_PORT", "18999")
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    assert main(["broker-config", "--out", str(tmp_path / "out")]) == 0
    users = {line.split(":", 1)[0] for line in (tmp_path / "out" / "passwords").read_text().split()}
    assert "wang.fang" in users and "li.na" not in users  # li.na is in config/workers.yaml
    assert "listener 18999 127.0.0.1" in (tmp_path / "out" / "listeners.conf").read_text()


def test_cli_names_a_bad_workers_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "workers.yaml"
    bad.write_text("workers:\n- username: li.na\n  name: 李娜\n  areas: ['nowhere']\n")
    argv = ["broker-config", "--out", str(tmp_path / "out"), "--workers", str(bad)]
    argv += ["--registry", str(REPO / "config" / "registry.yaml")]
    assert main(argv) == 1
    assert f"{bad}: workers[0] (username=li.na): areas.0: no area 'nowhere'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_stack_up_binds_its_tls_listener_where_the_setting_says(tmp_path: Path) -> None:
    """CITYSENSE_MQTT_TLS_BIND reaches the listener `stack up` writes (ec1dc14: always
    127.0.0.1)."""
    settings = Settings(
        registry=REPO / "config" / "registry.yaml",
        workers=REPO / "config" / "workers.yaml",
        mqtt_tls_port=free_port(),
        mqtt_tls_bind="0.0.0.0",
        data_dir=tmp_path,
    )
    files = stack.broker_files(settings, tmp_path / "broker")
    assert f"listener {settings.mqtt_tls_port} 0.0.0.0\n" in files.listeners.read_text()
