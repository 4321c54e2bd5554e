"""The one settings model of citysense, read from ``CITYSENSE_*`` environment variables.

Every process (``stack``, ``serve``, ``simulate``, the tests) reads the same model, so moving
``CITYSENSE_MQTT_PORT``, ``CITYSENSE_INFLUX_URL`` and ``CITYSENSE_DATA_DIR`` moves a whole
second stack elsewhere.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from devices.credentials import (
    INGEST_USER,
    LOCAL_EXAMPLE_DEV_SECRET,
    LOCAL_EXAMPLE_INGEST_PASSWORD,
)
from ingest.configfile import CitysenseTomlSource, config_file_path


class InfluxDialect(StrEnum):
    """Which InfluxDB write endpoint to use."""

    AUTO = "auto"  # decided from /ping's X-Influxdb-Version
    V1 = "v1"  # POST /write?db=&rp= (InfluxDB 1.x)
    V2 = "v2"  # POST /api/v2/write through influxdb-client (1.8+, 2.x, 3.x, VictoriaMetrics)


class Settings(BaseSettings):
    """citysense configuration; each field is ``CITYSENSE_<NAME>`` in the environment, or
    ``<name>`` in the config file ``citysense.toml`` (ingest/configfile.py)."""

    model_config = SettingsConfigDict(env_prefix="CITYSENSE_", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """First wins: init kwargs, environment, the config file (``citysense.toml``), defaults.

        The file is found anew on each construction, so ``CITYSENSE_CONFIG`` set by a test or
        a parent process is honoured (see ingest/configfile.py).
        """
        toml = CitysenseTomlSource(settings_cls, config_file_path())
        return (init_settings, env_settings, dotenv_settings, toml, file_secret_settings)

    # MQTT broker
    mqtt_host: str = Field("127.0.0.1", description="broker host")
    mqtt_port: int = Field(
        1883, ge=1, le=65535, description="broker port (also where `stack up` starts Mosquitto)"
    )
    mqtt_username: str = Field(INGEST_USER, description="the ingest service's broker user")
    mqtt_password: SecretStr = Field(
        SecretStr(LOCAL_EXAMPLE_INGEST_PASSWORD),
        description="its broker password; the default is public, for the local stack only",
    )
    mqtt_tls_port: int = Field(8883, ge=1, le=65535, description="TLS listener of `stack up`")
    mqtt_tls_bind: str = Field(
        "127.0.0.1",
        description="address the TLS listener of `stack up` binds (0.0.0.0: all interfaces)",
    )
    mqtt_tls: bool = Field(
        False, description="the service connects to the broker over TLS (1.2 or 1.3)"
    )
    mqtt_ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker with; unset: the system's trust store"
    )
    mqtt_cert_file: Path | None = Field(
        None, description="client certificate for TLS (optional; needs CITYSENSE_MQTT_KEY_FILE)"
    )
    mqtt_key_file: Path | None = Field(None, description="the client certificate's private key")
    environment: Literal["local", "production"] = Field(
        "local",
        description="production: `serve`, `stack up` and `broker-config` refuse to start "
        "while a secret is unset or a public example value",
    )
    dev_secret: SecretStr = Field(
        SecretStr(LOCAL_EXAMPLE_DEV_SECRET),
        description="device and worker passwords are HMAC-SHA256(dev_secret, id); the default "
        "is public, for the local example city only",
    )
    workers: Path = Field(Path("config/workers.yaml"), description="grid workers and areas")
    mqtt_client_id: str = Field(
        "citysense-ingest-1", description="fixed per ingest process: the broker keeps its session"
    )
    mqtt_share_group: str = Field(
        "",
        description="shared-subscription group, to split load over several processes; empty: "
        "a plain subscription, which Mosquitto keeps across its own restarts",
    )

    mqtt_also: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="further broker nodes, host:port comma-separated, tried in turn when the "
        "one in use fails (a NATS cluster; with `stack up` in nats mode, its other nodes)",
    )
    database_url: SecretStr | None = Field(
        None,
        description="the alert store's database as a SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user:password@host/citysense (shared by the workers of a cluster); "
        "unset: the SQLite file alerts.sqlite3 in the data directory",
    )
    broker: Literal["mosquitto", "nats"] = Field(
        "mosquitto",
        description="mosquitto: one broker (the default); nats: a cluster of NATS nodes with "
        "JetStream, devices' messages partitioned by device id (docs/architecture.md)",
    )
    broker_nodes: int = Field(
        3, ge=1, le=9, description="nats: how many nodes `stack up` starts on loopback"
    )
    partitions: int = Field(
        16, ge=1, le=1024, description="nats: partitions the broker splits devices into (fixed)"
    )
    nats_ack_wait_s: float = Field(
        60,
        ge=5,
        description="nats: a message not acknowledged this long is sent again (keep it above "
        "the longest the service may hold an acknowledgement)",
    )
    worker_name: str = Field(
        "worker-1",
        pattern=r"^[A-Za-z0-9_-]{1,48}$",
        description="nats: this `serve` process's name in the cluster, distinct per process "
        "(partition leases are held by name)",
    )
    lease_s: float = Field(
        6.0,
        ge=1.0,
        le=120.0,
        description="nats: a partition's lease; a worker that stops beating loses its "
        "partitions this long after its last beat (beats every third of it)",
    )
    postgres_port: int = Field(
        15432,
        ge=1,
        le=65535,
        description="nats: the port `stack up` starts PostgreSQL on (the workers' shared database)",
    )

    @field_validator("mqtt_also", mode="before")
    @classmethod
    def _nodes(cls, value: object) -> object:
        """``host:port,host:port`` from the environment or a string in the config file."""
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)):
            for node in value:
                host, _, port = str(node).rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{node!r} is not host:port")
        return value

    # InfluxDB
    influx_url: str = Field(
        "http://127.0.0.1:8086", description="InfluxDB (also where `stack up` starts it)"
    )
    influx_dialect: InfluxDialect = Field(
        InfluxDialect.AUTO,
        description="v1 (/write), v2 (/api/v2/write), auto (from /ping's X-Influxdb-Version)",
    )
    influx_database: str = Field("citysense", description="v1 database (created by `stack up`)")
    influx_retention_policy: str = Field("", description="v1 retention policy; empty: default")
    influx_username: str | None = Field(None, description="v1 user")
    influx_password: SecretStr | None = Field(None, description="v1 password")
    influx_token: SecretStr | None = Field(None, description="v2 API token")
    influx_org: str = Field("citysense", description="v2 organisation")
    influx_bucket: str = Field("citysense", description="v2 bucket")

    # Files
    registry: Path = Field(Path("config/registry.yaml"), description="areas and devices")
    rules: Path = Field(Path("config/rules.yaml"), description="alert rules")
    cases: Path = Field(
        Path("config/cases.yaml"), description="case (work order) deadlines per step and severity"
    )
    channels: Path = Field(
        Path("config/channels.yaml"),
        description="delivery channels: robots, SMS gateway and webhooks, who hears on which, "
        "severities, quiet hours",
    )
    sharing: Path = Field(
        Path("config/sharing.yaml"),
        description="which data sets other departments' tokens may read: classes, grants "
        "(re-read within a second of a change; missing or broken: nothing is shared)",
    )
    vendors: Path = Field(
        Path("config/vendors.yaml"),
        description="per device model, how a vendor's own JSON reads as our payloads (a "
        "device's `model:` in the registry; read at start; missing: every device speaks our "
        "JSON; broken: `serve` refuses to start, naming the problems)",
    )
    data_dir: Path = Field(
        Path(".data"), description="stack data, dead letters, spool, alert store"
    )

    # Field gateways (ingest/gateway/): stations that speak HJ 212-2017 or SL 651-2014 over TCP
    gateway_bind: str = Field(
        "127.0.0.1", description="address the gateways listen on (0.0.0.0: every interface)"
    )
    gateway_hj212_port: int = Field(
        9212, ge=0, le=65535, description="HJ 212 gateway's TCP port (0: any free port)"
    )
    gateway_sl651_port: int = Field(
        9651, ge=0, le=65535, description="SL 651 gateway's TCP port (0: any free port)"
    )
    gateway_tls_cert_file: Path | None = Field(
        None, description="stations connect with TLS: the gateway's certificate chain (PEM)"
    )
    gateway_tls_key_file: Path | None = Field(None, description="the gateway certificate's key")
    gateway_hj212_skip: Annotated[tuple[str, ...], NoDecode] = Field(
        ("w00000", "w01014", "w01018", "w21001"),
        description="HJ 212 factor codes read past, not refused as unknown_factor (comma list; "
        "default: effluent flow, conductivity, CODcr, total nitrogen)",
    )

    @field_validator("gateway_hj212_skip", mode="before")
    @classmethod
    def _factor_codes(cls, value: object) -> object:
        """``w21001,w01018`` from the environment or a string in the config file."""
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)):
            for code in value:
                if not re.fullmatch(r"[0-9A-Za-z]{1,12}", str(code)):
                    raise ValueError(f"{code!r} is not an HJ 212 factor code")
        return value

    gateway_idle_s: float = Field(
        900.0, gt=0, description="a station silent this long is disconnected"
    )
    gateway_max_stations: int = Field(
        10_000, ge=1, description="connections one gateway holds at once; more are refused"
    )

    # Delivery to people's channels (ingest/delivery/)
    delivery_backoff_base_s: float = Field(
        2.0, gt=0, description="a failed delivery is retried after ~this, doubling"
    )
    delivery_backoff_max_s: float = Field(300.0, gt=0, description="retries at most this apart")
    delivery_max_age_s: float = Field(
        86_400.0, gt=0, description="a delivery undelivered this long is given up (expired)"
    )
    delivery_timeout_s: float = Field(10.0, gt=0, description="one request to a platform")
    delivery_concurrency: int = Field(
        16, ge=1, le=1000, description="requests in flight at once (the most a crash repeats)"
    )

    # HTTP API
    api_host: str = Field("127.0.0.1", description="address the HTTP API binds")
    api_port: int = Field(8080, ge=0, le=65535, description="0: any free port (tests)")
    api_enabled: bool = Field(True, description="serve the HTTP API beside the consumer")
    api_streams_per_token: int = Field(
        4, ge=1, description="open /alerts/stream connections one token may hold at once"
    )
    case_photo_max_bytes: int = Field(
        5 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest photo a case takes (POST /cases/{id}/photos); larger: 413",
    )
    api_tokens_file: Path | None = Field(
        None,
        description="YAML file of API bearer tokens (hashes only, mode 0600), written by "
        "`citysense tokens`; default: <data_dir>/tokens.yaml",
    )

    # Pipeline
    batch_size: int = Field(5000, ge=1, description="flush a batch at this many points")
    batch_interval_s: float = Field(0.5, gt=0, description="... or when its oldest is this old")
    spool_after_s: float = Field(
        5.0, gt=0, description="InfluxDB failing this long: batches go to the on-disk spool"
    )
    spool_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="spool cap; when full the service stops taking messages and the broker "
        "keeps them (nothing is dropped)",
    )
    max_payload_bytes: int = Field(
        16_384, ge=64, description="larger payloads are rejected as too_large"
    )
    future_skew_s: float = Field(300, ge=0, description="reject ts further ahead than this")
    ahead_tolerance_s: float = Field(
        2.0,
        ge=0,
        description="a ts up to this far ahead of its arrival is judged as stamped; further "
        "ahead (a fast device clock), the rules judge it at the stamp less the device's "
        "measured clock skew, never later than its arrival plus this, so it cannot hide the "
        "readings after it. Raise it (with future_skew_s) only to replay an "
        "accelerated simulation",
    )
    max_age_s: float = Field(30 * 86400, gt=0, description="reject ts older than this")
    clock_skew_warn_s: float = Field(
        60,
        gt=0,
        description="a device whose clock is off by more than this (either way) is counted in "
        "citysense_devices_clock_skewed; /devices/{id} shows each device's clock_skew_s",
    )
    plate_key: SecretStr = Field(
        SecretStr("citysense-dev-plate-key"), description="HMAC key for plate hashes"
    )
    deadletter_max_rows: int = Field(
        100_000, ge=1, description="per reason: the oldest rows of a reason pruned beyond this"
    )
    status_interval_s: float = Field(5.0, gt=0, description="seconds between status log lines")
    alert_start_grace_s: float = Field(
        30.0,
        ge=0,
        description="after start, seconds before deadlines (silence) are judged, so the "
        "broker's backlog from the downtime is read first",
    )
    alert_renotify_s: float = Field(
        600.0,
        ge=0,
        description="an alert that keeps repeating is published again at most this often "
        "(state changes always go out at once); 0: every repeat",
    )
    # 1 s: a snapshot costs ~0.1 ms on the event loop and ~2 ms of JSON in a thread (issue 7),
    # and after a crash only what was judged since the last one is not judged again.
    alert_snapshot_interval_s: float = Field(
        1.0, gt=0, description="seconds between saves of the rule engine's state"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @property
    def influx_port(self) -> int:
        """The TCP port of ``influx_url``."""
        return urlsplit(self.influx_url).port or 8086

    @property
    def influx_host(self) -> str:
        """The host of ``influx_url``."""
        return urlsplit(self.influx_url).hostname or "127.0.0.1"
