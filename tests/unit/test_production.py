"""CITYSENSE_ENVIRONMENT=production refuses public or empty secrets at start (issue 13, item 8).

ec1dc14 had no CITYSENSE_ENVIRONMENT (the settings forbid unknown variables, so every test
here fails there) and started silently with the public defaults. A unit test: the refusal
happens before any server is touched, so no stack is needed to show it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from devices.credentials import LOCAL_EXAMPLE_DEV_SECRET, LOCAL_EXAMPLE_INGEST_PASSWORD
from ingest.ops.production import PublicSecretError, check_production, public_secrets
from ingest.settings import Settings

SECRETS = ("CITYSENSE_DEV_SECRET", "CITYSENSE_MQTT_PASSWORD", "CITYSENSE_PLATE_KEY")
GOOD = {
    "dev_secret": SecretStr("a-real-provisioning-secret"),
    "mqtt_password": SecretStr("a-real-ingest-password"),
    "plate_key": SecretStr("a-real-plate-key"),
}
CITYSENSE = Path(sys.executable).parent / "citysense"


def settings(environment: str, **change: object) -> Settings:
    return Settings(environment=environment, **{**GOOD, **change})  # type: ignore[arg-type]


def test_local_accepts_the_public_defaults() -> None:
    check_production(Settings(environment="local"))
    assert Settings().environment == "local"  # the default: the example city needs no setup


def test_production_accepts_secrets_of_its_own() -> None:
    check_production(settings("production"))
    assert public_secrets(settings("production")) == []


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("dev_secret", LOCAL_EXAMPLE_DEV_SECRET, "CITYSENSE_DEV_SECRET"),
        ("dev_secret", "", "CITYSENSE_DEV_SECRET"),
        ("mqtt_password", LOCAL_EXAMPLE_INGEST_PASSWORD, "CITYSENSE_MQTT_PASSWORD"),
        ("mqtt_password", "  ", "CITYSENSE_MQTT_PASSWORD"),
        ("plate_key", "citysense-dev-plate-key", "CITYSENSE_PLATE_KEY"),
        ("plate_key", "", "CITYSENSE_PLATE_KEY"),
    ],
)
def test_production_names_each_public_or_empty_secret(
    field: str, value: str, variable: str
) -> None:
    bad = settings("production", **{field: SecretStr(value)})
    assert public_secrets(bad) == [variable]
    with pytest.raises(PublicSecretError, match=variable):
        check_production(bad)


def test_production_with_nothing_set_names_all_three() -> None:
    with pytest.raises(PublicSecretError) as e:
        check_production(Settings(environment="production"))
    assert all(v in str(e.value) for v in SECRETS)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSENSE_")}
    return {**env, "CITYSENSE_DATA_DIR": str(tmp_path / "data"), **extra}


@pytest.mark.parametrize(
    "argv",
    [["serve"], ["stack", "up"], ["broker-config", "--out", "OUT"], ["run"]],
    ids=["serve", "stack-up", "broker-config", "run"],
)
def test_the_cli_refuses_to_start_in_production_with_public_secrets(
    tmp_path: Path, argv: list[str]
) -> None:
    out = tmp_path / "broker"
    argv = [str(out) if a == "OUT" else a for a in argv]
    env = _env(
        tmp_path,
        CITYSENSE_ENVIRONMENT="production",
        CITYSENSE_MQTT_PASSWORD="a-real-ingest-password",  # set: must not be named
        CITYSENSE_PLATE_KEY="",  # empty
        # CITYSENSE_DEV_SECRET unset: the public default
    )
    done = subprocess.run(
        [str(CITYSENSE), *argv], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "CITYSENSE_DEV_SECRET" in done.stderr and "CITYSENSE_PLATE_KEY" in done.stderr
    assert "CITYSENSE_MQTT_PASSWORD" not in done.stderr
    assert not out.exists() and not (tmp_path / "data" / "stack.json").exists()
