"""Rules: the loaded rules, and validation of a rule file sent in the body."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel

from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody
from ingest.api.ratelimit import WriteOperator
from ingest.api.tokens import Principal, Role
from rules.loader import parse_rules
from rules.problems import RulesError

router = APIRouter(prefix="/rules", tags=["rules"])
MAX_RULE_FILE_BYTES = 256 * 1024
_EXAMPLE = """rules:
- id: river_over_warning
  type: threshold
  name: River above warning level
  name_zh: 水位超警戒
  severity: major
  kinds: [river]
  field: water_level_m
  op: ">"
  attribute: warning_level_m
  for: 2m
"""


class RuleProblem(BaseModel):
    """One thing wrong: the rule entry, the field, what."""

    entry: str
    field: str
    message: str


class Validation(BaseModel):
    """The verdict on a rule file."""

    valid: bool
    rules: int
    problems: list[RuleProblem]


@router.get("", summary="the rules the service runs", responses=ERRORS)
async def list_rules(
    principal: Caller, ctx: Annotated[ApiContext, Depends(context)]
) -> list[dict[str, Any]]:
    """Each loaded rule as in its file (with defaults filled in).

    A grid worker sees every rule — what can raise an alert in its area is its business — but
    a rule's device list only as far as the devices in its own areas: where the city's other
    stations and cameras are watched is not.
    """
    out = [rule.model_dump(mode="json", by_alias=True) for rule in ctx.rules]
    if principal.role is Role.OPERATOR:
        return out
    for rule in out:
        if rule.get("devices"):
            rule["devices"] = [d for d in rule["devices"] if _sees_device(ctx, principal, d)]
    return out


def _sees_device(ctx: ApiContext, principal: Principal, device_id: str) -> bool:
    if device_id not in ctx.registry.devices:
        return False
    return principal.sees(a.id for a in ctx.registry.device_path(device_id).areas)


@router.post(
    "/validate",
    summary="validate a rule file (YAML) against the registry, without loading it",
    responses={413: {"model": ErrorBody}, 429: {"model": ErrorBody}, **ERRORS},
)
async def validate_rules(
    _: WriteOperator,
    ctx: Annotated[ApiContext, Depends(context)],
    body: Annotated[
        str,
        Body(media_type="application/yaml", openapi_examples={"one rule": {"value": _EXAMPLE}}),
    ],
) -> Validation:
    """Every problem with its rule entry and field, as ``citysense rules check`` prints them."""
    if len(body.encode()) > MAX_RULE_FILE_BYTES:
        raise ApiError(413, "too_large", f"a rule file is limited to {MAX_RULE_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as e:
        return Validation(
            valid=False,
            rules=0,
            problems=[RuleProblem(entry="(file)", field="(yaml)", message=str(e))],
        )
    try:
        ruleset = parse_rules(data, "<body>", ctx.registry)
    except RulesError as e:
        problems = [
            RuleProblem(entry=p.entry, field=p.field, message=p.message) for p in e.problems
        ]
        return Validation(valid=False, rules=0, problems=problems)
    return Validation(valid=True, rules=len(ruleset), problems=[])
