"""InfluxDB write endpoints behind one small protocol, and the error table they share.

Two dialects (docs/operations.md): ``/write`` of InfluxDB 1.x, and ``/api/v2/write`` through
influxdb-client for 1.8+, 2.x, 3.x and compatible servers. Both turn HTTP outcomes into the
same three exceptions, following Telegraf's influxdb_v2 output: 413 → split the batch,
400/422 → drop and report, 429/5xx/connection errors → retry honouring Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp

from ingest.settings import InfluxDialect, Settings

log = logging.getLogger(__name__)


class WriteError(Exception):
    """A write that did not succeed."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class Retryable(WriteError):
    """Worth trying again later (server busy or down, network trouble)."""

    def __init__(self, status: int | None, message: str, retry_after: float | None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class Rejected(WriteError):
    """The server refused the data itself; sending it again will not help."""


class TooLarge(WriteError):
    """The request body is over the server's limit; send smaller batches."""


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; rare for InfluxDB, and backoff covers it


def error_for(status: int, message: str, headers: Mapping[str, str] | None = None) -> WriteError:
    """Classify a non-2xx write response."""
    message = message.strip()[:500]
    if status == 413:
        return TooLarge(status, message)
    if status == 429 or status >= 500:
        return Retryable(status, message, _retry_after(headers))
    if status in (400, 422):
        return Rejected(status, message)
    # 401/403/404 (auth, missing database): configuration problems an operator can fix
    # without losing the data, so keep retrying and say so loudly.
    log.error("InfluxDB answered %s to a write: %s", status, message)
    return Retryable(status, message, None)


class LineSink(Protocol):
    """Somewhere lines of line protocol (ms precision) can be written."""

    async def write(self, lines: Sequence[str]) -> None:
        """Write all lines or raise WriteError."""

    async def close(self) -> None:
        """Release connections."""


class InfluxV1Sink:
    """POST /write?db=&rp=&precision=ms (InfluxDB 1.x)."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.influx_url.rstrip("/") + "/write"
        self._params = {"db": settings.influx_database, "precision": "ms"}
        if settings.influx_retention_policy:
            self._params["rp"] = settings.influx_retention_policy
        auth = None
        if settings.influx_username:
            password = (
                settings.influx_password.get_secret_value() if settings.influx_password else ""
            )
            auth = aiohttp.BasicAuth(settings.influx_username, password)
        self._session = aiohttp.ClientSession(
            auth=auth, timeout=aiohttp.ClientTimeout(total=30, connect=5)
        )

    async def write(self, lines: Sequence[str]) -> None:
        """Write the lines in one request."""
        body = "\n".join(lines).encode()
        try:
            async with self._session.post(self._url, params=self._params, data=body) as resp:
                if resp.status < 300:
                    return
                text = await resp.text(errors="replace")
                raise error_for(resp.status, text, resp.headers)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Retryable(None, f"{type(e).__name__}: {e}", None) from e

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()


class InfluxV2Sink:
    """POST /api/v2/write through influxdb-client (token, org, bucket).

    influxdb-client is imported here, not at the top: importing it takes ~0.25 s of the
    service's start-up, and a 1.x server (Debian's, the local default) never needs it.
    """

    def __init__(self, settings: Settings) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        token = settings.influx_token.get_secret_value() if settings.influx_token else ""
        self._bucket = settings.influx_bucket
        self._org = settings.influx_org
        self._client = InfluxDBClientAsync(
            url=settings.influx_url, token=token, org=settings.influx_org, timeout=30_000
        )
        self._api = self._client.write_api()

    async def write(self, lines: Sequence[str]) -> None:
        """Write the lines in one request."""
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision

        try:
            await self._api.write(
                bucket=self._bucket,
                org=self._org,
                record="\n".join(lines),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except InfluxDBError as e:
            # ApiException carries .status; a bare InfluxDBError only its response.
            status = getattr(e, "status", None) or getattr(e.response, "status", None)
            if status is None:
                raise Retryable(None, str(e), None) from e
            raise error_for(status, e.message or "", {"Retry-After": e.retry_after or ""}) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Retryable(None, f"{type(e).__name__}: {e}", None) from e

    async def close(self) -> None:
        """Close the client."""
        await self._client.close()  # type: ignore[no-untyped-call]


async def detect_dialect(url: str) -> InfluxDialect:
    """Pick the write dialect from /ping's X-Influxdb-Version (1.x → v1, 2.x/3.x → v2)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url.rstrip("/") + "/ping") as resp,
    ):
        version = resp.headers.get("X-Influxdb-Version", "")
    # 1.8 also serves /api/v2/write, but its /write needs no token/org mapping: prefer it.
    # Servers that send no version (VictoriaMetrics, proxies) speak /write as well.
    dialect = InfluxDialect.V1 if version.startswith("1.") or not version else InfluxDialect.V2
    log.info("InfluxDB at %s reports version %r: using the %s write API", url, version, dialect)
    return dialect


async def ping_influx(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when InfluxDB answers ``/ping``; otherwise why not (for readiness)."""
    try:
        async with session.get(
            url.rstrip("/") + "/ping", timeout=aiohttp.ClientTimeout(total=2)
        ) as resp:
            if resp.status < 300:
                return None
            return f"/ping answered HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return f"InfluxDB at {url} not reachable: {type(e).__name__} {e}".strip()


async def open_sink(settings: Settings) -> LineSink:
    """The sink for the configured (or detected) dialect."""
    dialect = settings.influx_dialect
    if dialect is InfluxDialect.AUTO:
        dialect = await detect_dialect(settings.influx_url)
    if dialect is InfluxDialect.V2:
        return InfluxV2Sink(settings)
    return InfluxV1Sink(settings)
