"""What the attack and crash review of the cases feature (issue 17) proved, kept as regression
tests: each failed on c1b813c for the reason in its docstring, and passes since the fix
(a colleague handling and verifying, token names taken as identities, ``auto`` as a reporter,
a photo attached to a closed case or with no history row, a non-UTF-8 cases file, one
unreadable row stopping supervision)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, update

from devices.kinds import Kind
from ingest.alerts.store import sqlite_url
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenStore
from ingest.cases.config import CaseConfigError, load_case_config
from ingest.cases.database import cases as cases_table
from ingest.cases.filing import case_from_alert
from ingest.cases.store import CaseStore
from rules.alerts import AUTO
from rules.cases import CaseSource, CaseState, close, file_case
from rules.loader import parse_rules
from rules.model import Severity
from tests.unit.casecity import case_config, registry
from tests.unit.test_case_store import PATHS, RULES
from tests.unit.test_cases_api import JPEG, PNG, Api, _report, api

__all__ = ["api"]  # the fixture, imported for pytest

MIN = 60_000


def _code(r: Any) -> tuple[int, str | None]:
    """(status, error code), the code None for a success; the body is in the assertion."""
    body = r.json()
    return r.status_code, body["error"]["code"] if "error" in body else None


def _ctx(api: Api) -> ApiContext:
    ctx: ApiContext = api.client._transport.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def _add_token(api: Api, tmp_path: Path, name: str, role: Role, areas: list[str]) -> str:
    """A token added by ``citysense tokens add`` while the server runs (picked up on a miss)."""
    token, _ = TokenStore.load(tmp_path / "tokens.yaml").add(name, role, areas)
    api.tokens[name + "#" + role.value] = token
    return name + "#" + role.value


async def _through_handled(api: Api, cid: str, to: str, who: str) -> None:
    """Dispatched to ``to``; ``who`` accepts, arrives and handles."""
    r = await api.post("duty", f"/cases/{cid}/dispatch", {"to": to})
    assert r.status_code == 200, r.text
    for path, body in (
        ("accept", None),
        ("arrive", {"lat": 27.2, "lon": 111.4}),
        ("handle", {"note": "done"}),
    ):
        r = await api.post(who, f"/cases/{cid}/{path}", body)
        assert r.status_code == 200, r.text


# -- roles ------------------------------------------------------------------------------------


async def test_whoever_handled_a_department_case_cannot_verify_it(api: Api) -> None:
    """caseaccess.checker_only looks only at ``case.handler`` (who *accepted*). In a department
    unit anyone holding the post may arrive and handle (assignee_only), so wang.qiang reports a
    case in his county, his colleague sun.li accepts it, wang.qiang arrives and handles it, then
    verifies his own work as its reporter: 200 instead of 403 own_work."""
    r = await api.post("wang.qiang", "/cases", {"title": "堤坝渗水", "grid": "g1"})
    assert r.status_code == 201, r.text
    cid = r.json()["case"]["id"]
    assert (
        await api.post("duty", f"/cases/{cid}/dispatch", {"to": "department/flood_hq"})
    ).is_success
    assert (await api.post("sun.li", f"/cases/{cid}/accept")).is_success
    # Fixed: once accepted, only the one who accepted goes on site and handles it.
    arrived = await api.post("wang.qiang", f"/cases/{cid}/arrive", {"lat": 27.2, "lon": 111.4})
    assert _code(arrived) == (403, "not_handler"), arrived.text
    handled = await api.post("wang.qiang", f"/cases/{cid}/handle", {"note": "已处置"})
    assert _code(handled) == (403, "not_handler"), handled.text
    assert (
        await api.post("sun.li", f"/cases/{cid}/arrive", {"lat": 27.2, "lon": 111.4})
    ).is_success
    assert (await api.post("sun.li", f"/cases/{cid}/handle", {"note": "已处置"})).is_success
    assert _code(await api.post("sun.li", f"/cases/{cid}/verify")) == (403, "own_work")
    # The reporter checks the work of the one who did it.
    assert (await api.post("wang.qiang", f"/cases/{cid}/verify", {"note": "好了"})).is_success


async def test_a_token_named_like_the_handler_does_not_see_the_case(
    api: Api, tmp_path: Path
) -> None:
    """caseaccess.handles compares ``case.handler`` (a people-file username) with ``me(p)``,
    which for a non-person token is the token's free-text name. A grid-worker token for g3
    named "wang.qiang" sees a g1 case wang.qiang (the person) handles: 200 instead of 404."""
    cid = (await _report(api, "li.na", "g1"))["id"]
    await _through_handled(api, cid, "department/flood_hq", "wang.qiang")
    other = _add_token(api, tmp_path, "wang.qiang", Role.GRID_WORKER, ["g3"])
    r = await api.get(other, f"/cases/{cid}")
    assert _code(r) == (404, "not_found"), r.text


async def test_a_token_named_like_the_operator_reporter_cannot_verify(
    api: Api, tmp_path: Path
) -> None:
    """caseaccess.reported (and store._visible) identify a non-person reporter by token name
    alone; token names are not unique. A grid-worker token for g2 named "duty officer" sees the
    operator's g3 report and verifies its handling as its "reporter": expected 404."""
    r = await api.post("duty", "/cases", {"title": "路灯不亮", "grid": "g3"})
    cid = r.json()["case"]["id"]
    await _through_handled(api, cid, "person/zhao.min", "zhao.min")
    spoof = _add_token(api, tmp_path, "duty officer", Role.GRID_WORKER, ["g2"])
    r = await api.post(spoof, f"/cases/{cid}/verify")
    assert _code(r) == (404, "not_found"), r.text


async def test_a_token_named_auto_is_not_the_reporter_of_every_auto_case(
    api: Api, tmp_path: Path
) -> None:
    """``tokens add`` refuses the name ``auto`` but a hand-edited tokens file (TokenEntry) keeps
    it (tokens.py says the alert store refuses its steps; the cases do not). Every case filed by
    a rule has reporter ``auto`` and reporter_person None, so caseaccess.reported is true for
    that token: it sees (and may verify) every auto-filed case in the city. Expected 404."""
    path = tmp_path / "tokens.yaml"
    token, _ = TokenStore.load(path).add("autox", Role.GRID_WORKER, ["g2"])
    path.write_text(path.read_text().replace("name: autox", "name: auto"))  # edited by hand
    api.tokens["auto"] = token
    alert, _, _ = api.alerts.open_or_repeat(
        rule_id="gate_tailgating",
        device_id="gate9",
        severity=Severity.MAJOR,
        kind=Kind.GATE,
        areas=PATHS["g3"],
        ts_ms=1_795_000_000_000,
        value="tailgating",
        detail="4 through",
    )
    reg = registry()
    now = time.time_ns() // 1_000_000
    new, first = case_from_alert(
        alert,
        parse_rules(RULES, "<test>", reg),
        reg,
        reporter=AUTO,  # what CaseFiler files a ``case: auto`` rule's alert as
        at_ms=now,
        deadlines=case_config().deadlines,
    )
    _ctx(api).cases.create(new, first)  # type: ignore[union-attr]
    r = await api.get("auto", f"/cases/{new.id}")
    assert _code(r) == (404, "not_found"), r.text


# -- photos -----------------------------------------------------------------------------------


async def test_no_photo_is_attached_to_a_case_closed_during_the_upload(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """casephotos.upload_photo checks "not closed" on a read before the body is parsed and
    written; CaseStore.attach_photo checks nothing under its lock. A case closed while its photo
    was being uploaded gets the photo anyway (201, and the closed case's photos change)."""
    cid = (await _report(api, "li.na", "g1"))["id"]
    await _through_handled(api, cid, "department/flood_hq", "wang.qiang")
    assert (await api.post("li.na", f"/cases/{cid}/verify")).is_success
    ctx = _ctx(api)
    store, photos = ctx.cases, ctx.photos
    assert store is not None and photos is not None
    save = photos.save

    def closing_meanwhile(source: Any) -> str:
        now = time.time_ns() // 1_000_000
        store.transition(cid, lambda c: close(c, actor="duty officer", at_ms=now))
        return save(source)

    monkeypatch.setattr(photos, "save", closing_meanwhile)
    r = await api.photo("li.na", cid, JPEG)
    after = store.get(cid)
    assert after is not None and after.state is CaseState.CLOSED
    assert after.photos == () and _code(r) == (409, "invalid_transition"), r.text


async def test_attaching_a_photo_leaves_a_history_row(api: Api) -> None:
    """CaseStore.attach_photo changes the case (its photos, updated_ms) with no history row and
    no actor: anyone who sees a case (the reporter, any grid worker of the area) may add
    pictures to a handled case, before it is verified, and nothing records who or when."""
    cid = (await _report(api, "li.na", "g1"))["id"]
    await _through_handled(api, cid, "department/flood_hq", "wang.qiang")
    before = (await api.get("li.na", f"/cases/{cid}")).json()["history"]
    assert (await api.photo("li.na", cid, PNG)).status_code == 201  # not the handler
    detail = (await api.get("duty", f"/cases/{cid}")).json()
    assert len(detail["case"]["photos"]) == 1
    assert len(detail["history"]) == len(before) + 1, "the photo's attachment is in no history"


# -- config and the clock -----------------------------------------------------------------------


def test_a_cases_file_not_in_utf8_is_a_named_config_error(tmp_path: Path) -> None:
    """config.load_case_config catches YAMLError and OSError only; a file saved in GBK (a
    Chinese city's editor default) raises UnicodeDecodeError, a traceback at ``serve``."""
    path = tmp_path / "cases.yaml"
    path.write_bytes("# 案件时限\ndeadlines: {}\n".encode("gbk"))
    with pytest.raises(CaseConfigError):
        load_case_config(path)


def test_one_unreadable_case_does_not_stop_every_supervision(tmp_path: Path) -> None:
    """CaseStore.supervise_overdue validates each row with the strict ``Case`` (extra=forbid);
    one case whose body does not validate (written by a newer version in a rolling upgrade:
    database.py promises "new fields need no migration") raises out of the sweep every second,
    and being the most overdue it is first every time: no other case is ever supervised."""
    url = sqlite_url(tmp_path)
    store = CaseStore(url)
    deadlines = case_config().deadlines
    t0 = 1_795_000_000_000
    made = []
    for i in range(2):
        new, first = file_case(
            title=f"case {i}",
            source=CaseSource.OPERATOR,
            severity=Severity.WARNING,
            areas=PATHS["g1"],
            reporter="duty officer",
            at_ms=t0 + i * MIN,
            deadlines=deadlines,
        )
        store.create(new, first)
        made.append(new)
    newer = made[0].model_dump(mode="json") | {"priority": "high"}  # a later version's field
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(cases_table).where(cases_table.c.id == made[0].id).values(body=newer))
    engine.dispose()
    with contextlib.suppress(Exception):  # it may report the bad one, but not stop there
        store.supervise_overdue(t0 + 60 * MIN, deadlines)
    healthy = store.get(made[1].id)
    store.close()
    assert healthy is not None and healthy.supervised, "the healthy overdue case was skipped"
