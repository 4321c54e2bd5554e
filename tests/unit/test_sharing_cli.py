"""``citysense tokens add --role department``: a token named by a registry department, narrowed
to some of its areas if asked, refused with the reason otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.alerts.store import sqlite_url
from ingest.api.tokens import Role, TokenStore
from ingest.cli import main
from ingest.sharing.audit import AuditLog, AuditRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    monkeypatch.delenv("CITYSENSE_API_TOKENS_FILE", raising=False)
    monkeypatch.delenv("CITYSENSE_DATABASE_URL", raising=False)
    return tmp_path / "tokens.yaml"


def _add(*args: str) -> int:
    return main(["tokens", "add", "--role", "department", *args])


def test_a_department_token_stands_for_its_department(
    tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _add("--name", "ecology_env", "--department", "ecology_env") == 0
    out, err = capsys.readouterr()
    principal = TokenStore.load(tokens_file).verify(out.strip())
    assert principal is not None and principal.role is Role.DEPARTMENT
    assert principal.department == "ecology_env" and principal.areas == frozenset()
    assert "every read audited" in err
    assert _add("--name", "traffic_police", "--area", "430503001") == 0  # a township of its own
    principal = TokenStore.load(tokens_file).verify(capsys.readouterr().out.strip())
    assert principal is not None and principal.areas == {"430503001"}
    assert main(["tokens", "list"]) == 0
    assert "(its department's)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--name", "tax_office"], "no department 'tax_office'"),
        (["--name", "ecology_env", "--department", "emergency"], "--name emergency"),
        (["--name", "ecology_env", "--area", "nowhere"], "no area nowhere"),
        (["--name", "ecology_env", "--area", "430500"], "430500 is not in ecology_env's areas"),
    ],
)
def test_a_department_token_that_cannot_be_is_refused(
    tokens_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], reason: str
) -> None:
    assert _add(*args) == 2
    assert reason in capsys.readouterr().err
    assert not tokens_file.exists()


def test_department_is_only_for_department_tokens(
    tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tokens", "add", "--name", "ops", "--role", "operator", "--department", "emergency"]
    assert main(argv) == 2
    assert "--department is for --role department" in capsys.readouterr().err


def test_audit_list_shows_the_recorded_reads(
    tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(sqlite_url(tokens_file.parent))
    for i, department in enumerate(("ecology_env", "traffic_police", "ecology_env")):
        log.record(
            AuditRecord(
                at_ms=1_764_000_000_000 + i,
                token_id="0123456789ab",
                token_name=department,
                department=department,
                method="GET",
                endpoint="/series",
                path="/series",
                status=200 if i else 403,
                data_set="river",
                query={"kind": ["river"]},
                rows=12 if i else None,
                code=None if i else "not_shared",
            )
        )
    log.close()
    assert main(["audit", "list", "--department", "ecology_env", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["rows"], r["code"]) for r in rows] == [
        (200, 12, None),
        (403, None, "not_shared"),
    ]
    assert main(["audit", "list", "--until", "2025-11-24T16:00:00.001+00:00"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and "not_shared" in table[1]  # the header and the first read
