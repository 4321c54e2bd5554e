"""Schema-driven fuzzing of the running API: every operation in its own OpenAPI document,
every parameter filled with random and hostile text by hypothesis. No answer may be a 500,
every error must have the one shape, and a grid worker never gets data from outside its areas.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_api import HOSTILE, Api, bearer
from tests.integration.test_api import api as api  # the running service, as a fixture here too

pytestmark = pytest.mark.integration

SKIPPED = {("get", "/alerts/stream")}  # endless by design; tested in test_api.py
EXAMPLES = 150

# Values a parameter may get: random text, numbers, dates, near-valid names, hostile strings.
values = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="ascii"), max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(HOSTILE),
    st.sampled_from(["river", "gate", "road", "water_level_m", "1m", "mean", "open", "csv"]),
)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(method, path, parameters) of every operation in the document."""
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if (method, path) not in SKIPPED:
                out.append((method, path, op.get("parameters", [])))
    return sorted(out, key=lambda o: (o[1], o[0]))


def fuzz(target: Api, spec: dict[str, Any]) -> list[str]:
    """Run the hypothesis search against every operation; return what went wrong."""
    problems: list[str] = []
    ops = operations(spec)
    river_grid = target.river.grid

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(
        op=st.sampled_from(ops),
        picks=st.lists(values, min_size=12, max_size=12),
        token=st.sampled_from(["operator", "worker", "stranger"]),
        body=st.one_of(st.none(), values, st.dictionaries(st.text(max_size=10), values)),
    )
    def one(
        op: tuple[str, str, list[dict[str, Any]]],
        picks: list[str],
        token: str,
        body: Any,
    ) -> None:
        method, path, parameters = op
        query: dict[str, str] = {}
        url = path
        for i, parameter in enumerate(parameters):
            value = picks[i % len(picks)]
            if parameter["in"] == "path":
                url = url.replace("{" + parameter["name"] + "}", quote(value, safe="") or "x")
            elif parameter["in"] == "query":
                query[parameter["name"]] = value
        secret = {
            "operator": target.operator,
            "worker": target.worker,
            "stranger": target.stranger,
        }[token]
        with httpx.Client(base_url=target.url, timeout=10) as client:
            kwargs: dict[str, Any] = {"params": query, "headers": bearer(secret)}
            if method == "post":
                if path == "/rules/validate":
                    kwargs["content"] = str(body).encode()
                elif body is not None:
                    kwargs["content"] = json.dumps(body).encode()
                    kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
            answer = client.request(method.upper(), url, **kwargs)
        where = f"{method.upper()} {url} {query} as {token}: {answer.status_code}"
        if answer.status_code >= 500:
            problems.append(f"{where} {answer.text[:200]}")
            return
        if (
            answer.status_code >= 400
            and path.startswith("/ngsi-ld/")
            and answer.status_code not in (401, 403, 429)
        ):
            # NGSI-LD answers its errors as the spec's ProblemDetails (type, title, detail).
            problem = answer.json()
            if not str(problem.get("type", "")).startswith("https://uri.etsi.org/ngsi-ld/errors/"):
                problems.append(f"{where}: not an NGSI-LD ProblemDetails: {answer.text[:200]}")
        elif answer.status_code >= 400:
            error = answer.json().get("error", {})
            if not error.get("code") or not error.get("message"):
                problems.append(f"{where}: error without the shape: {answer.text[:200]}")
        elif (
            token == "stranger"
            and path.startswith(("/devices", "/alerts"))
            and river_grid in answer.text
        ):
            # The stranger's grid has none of the test's devices: nothing of river_grid leaks.
            problems.append(f"{where}: leaked {river_grid}")

    one()
    return problems


async def test_no_operation_answers_500_or_leaks_to_random_and_hostile_input(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        spec = (await client.get("/openapi.json")).json()
    assert len(operations(spec)) >= 13
    problems = await asyncio.to_thread(fuzz, api, spec)
    assert problems == []
