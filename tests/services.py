"""Small clients the tests use to look inside InfluxDB and VictoriaMetrics."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


def influx_query(url: str, database: str, query: str, epoch: str | None = None) -> list[Any]:
    """Run InfluxQL; return the first statement's series (an empty list if none)."""
    params = {"q": query, "db": database}
    if epoch:
        params["epoch"] = epoch
    data = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as resp:
        answer = json.load(resp)
    result = answer["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxDB error for {query!r}: {result['error']}")
    series: list[Any] = result.get("series", [])
    return series


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """What VictoriaMetrics stored for a series selector (``/api/v1/export``, JSON lines)."""
    # Samples sit in an in-memory buffer for up to a few seconds before they are searchable;
    # /internal/force_flush (meant for tests) makes them visible now.
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10):
        pass
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]
