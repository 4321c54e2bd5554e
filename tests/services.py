"""Small clients the tests use to look inside InfluxDB and VictoriaMetrics (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any


def influx_query(url: str, database: str, query: str, epoch: str | None = None) -> list[Any]:
    """Run InfluxQL on ``/query``; return the first statement's series (``[]`` if none).

    Each series is InfluxDB's JSON: ``{"name", "columns", "values"[, "tags"]}``. ``epoch``
    ("ms", "ns", ...) returns times as integers instead of RFC 3339 strings.
    """
    params = {"q": query, "db": database}
    if epoch:
        params["epoch"] = epoch
    data = urllib.parse.urlencode(params).encode()
    try:
        with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"InfluxDB HTTP {e.code} for {query!r}: {e.read()!r}") from e
    result = answer["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxDB error for {query!r}: {result['error']}")
    series: list[Any] = result.get("series", [])
    return series


def new_database(url: str, prefix: str) -> str:
    """Create an InfluxDB database of a fresh name starting with ``prefix``; return the name."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    influx_query(url, "", f'CREATE DATABASE "{database}"')
    return database


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """What VictoriaMetrics stored for a series selector (``/api/v1/export``, JSON lines).

    Each item is ``{"metric": {"__name__", tags...}, "values": [...], "timestamps": [ms...]}``;
    line-protocol field ``f`` of measurement ``m`` is stored as metric ``m_f``.
    """
    # Samples sit in an in-memory buffer for up to a few seconds before they are searchable;
    # /internal/force_flush (meant for tests) makes them visible now.
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10):
        pass
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]
