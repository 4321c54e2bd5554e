"""What a simulation run is asked to do, and where it publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from devices.credentials import device_password
from devices.kinds import Kind
from simulator.scenarios import ANY_SCENARIO, SCENARIOS

# How devices report: MQTT JSON (devices without a protocol in the registry), or a field
# protocol through a citysense gateway (the stations registered with that protocol).
FieldProtocol = Literal["hj212", "sl651"]
Transport = Literal["mqtt", "hj212", "sl651"]
TRANSPORTS: tuple[Transport, ...] = ("mqtt", "hj212", "sl651")
FIELD_PROTOCOLS: tuple[FieldProtocol, ...] = ("hj212", "sl651")
# HJ 212-2017's retry (超时时间 OverTime, 重发次数 ReCount): a frame that asked for an answer and
# got none within the timeout is sent again, up to 3 times; SL 651 stations are simulated alike.
ANSWER_TIMEOUT_S = 5.0
RESENDS = 3
DEFAULT_SCENARIO_AT_S = 5.0  # when an open-ended run starts its scenarios
SCENARIO_AT_FRACTION = 0.1  # when a timed run starts them: 10% in, after a normal baseline


class MqttTarget(BaseModel):
    """The broker the simulated devices connect to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(None, repr=False)  # kept out of logs and tracebacks
    # With a secret, each device logs in as itself with its derived password
    # (devices/credentials.py), as the broker's generated password file expects; username and
    # password then apply to nothing.
    dev_secret: str | None = Field(None, repr=False)

    def credentials(self, device_id: str) -> tuple[str | None, str | None]:
        """(username, password) for a device's own connection."""
        if self.dev_secret is not None:
            return device_id, device_password(self.dev_secret, device_id)
        return self.username, self.password


class GatewayTarget(BaseModel):
    """A citysense field gateway the stations of one protocol connect to over TCP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> GatewayTarget:
        """``HOST:PORT`` (``[::1]:9212`` for IPv6); ValueError if it is not one."""
        host, sep, port = text.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host=host, port=int(port))

    @classmethod
    def listening_on(cls, bind: str, port: int) -> GatewayTarget | None:
        """Where to reach a gateway bound to ``bind``:``port`` on this machine; None when the
        port is 0 (any free one: only the gateway knows it)."""
        if port == 0:
            return None
        # A gateway listening on every interface is reached on the loopback one.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)
        return cls(host=host, port=port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SimulationConfig(BaseModel):
    """A simulation run; the fields match the ``citysense simulate`` options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: Annotated[int, Field(ge=1)] | None = None  # None: every device of the kinds
    rate: float = Field(10.0, gt=0, le=1_000_000)  # messages per second, all devices together
    duration: float = Field(0.0, ge=0)  # seconds; 0 runs until cancelled
    scenarios: tuple[str, ...] = ()
    scenario_at: Annotated[float, Field(ge=0)] | None = None  # None: see scenario_start_s
    scenario_device: dict[str, str] = Field(default_factory=dict)  # scenario (or "*") → id
    kinds: tuple[Kind, ...] = tuple(Kind)
    seed: int = 0
    synthetic: Annotated[int, Field(ge=1, le=1_000_000)] | None = None  # make N devices
    write_registry: Path | None = None  # where to save the registry the run used
    as_json: bool = False  # print the report as JSON rather than a table
    connect_concurrency: int = Field(32, ge=1, le=10_000)  # connections opening at once
    publish_timeout_s: float = Field(10.0, gt=0)  # wait for a PUBACK at most this long
    protocols: tuple[Transport, ...] = ("mqtt",)  # which devices: by how they report
    gateways: dict[FieldProtocol, GatewayTarget] = Field(default_factory=dict)  # over defaults
    answer_timeout_s: float = Field(ANSWER_TIMEOUT_S, gt=0)  # a station's wait for an answer
    resends: int = Field(RESENDS, ge=0, le=100)  # then it sends the frame again, this often

    @field_validator("scenarios")
    @classmethod
    def _known_scenarios(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise ValueError(
                f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
            )
        return tuple(dict.fromkeys(names))

    @field_validator("kinds")
    @classmethod
    def _some_kinds(cls, kinds: tuple[Kind, ...]) -> tuple[Kind, ...]:
        if not kinds:
            raise ValueError("need at least one device kind")
        return tuple(dict.fromkeys(kinds))

    @field_validator("protocols")
    @classmethod
    def _some_protocols(cls, protocols: tuple[Transport, ...]) -> tuple[Transport, ...]:
        if not protocols:
            raise ValueError(f"need at least one of {', '.join(TRANSPORTS)}")
        return tuple(dict.fromkeys(protocols))

    @model_validator(mode="after")
    def _scenarios_fit(self) -> SimulationConfig:
        unknown = set(self.scenario_device) - set(self.scenarios) - {ANY_SCENARIO}
        if unknown:
            raise ValueError(f"scenario_device names scenarios not asked for: {sorted(unknown)}")
        if self.scenarios and self.duration and self.scenario_start_s >= self.duration:
            raise ValueError(
                f"scenarios would start at {self.scenario_start_s:g} s, "
                f"after the run ends at {self.duration:g} s"
            )
        return self

    @property
    def scenario_start_s(self) -> float:
        """When scenarios start: --scenario-at, else 10% into a timed run, else 5 s in."""
        if self.scenario_at is not None:
            return self.scenario_at
        return SCENARIO_AT_FRACTION * self.duration if self.duration else DEFAULT_SCENARIO_AT_S

    @property
    def until_s(self) -> float | None:
        """When the run ends, in seconds after it starts; None if it runs until cancelled."""
        return self.duration or None
