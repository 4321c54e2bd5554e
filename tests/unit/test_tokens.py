"""API bearer tokens: hashed at rest, verified in constant time, scoped to areas."""

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from devices.kinds import Level
from devices.registry import Registry
from ingest.api.tokens import Principal, Role, TokensFileError, TokenStore
from ingest.cli import main

REPO = Path(__file__).resolve().parents[2]
GRID = "430502001001-01"
SIBLING_GRID = "430502001001-02"  # same village as GRID
VILLAGE = "430502001001"
OTHER_GRID = "430502001002-01"  # another village


def split(token: str) -> tuple[str, str]:
    """(id, secret) of a well-formed token."""
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "cst"
    return token_id, secret


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.yaml"


@pytest.fixture
def store(path: Path) -> TokenStore:
    return TokenStore.load(path)


def test_add_then_verify_round_trip(store: TokenStore, path: Path) -> None:
    op_token, op = store.add("admin", Role.OPERATOR)
    gw_token, gw = store.add("李娜", Role.GRID_WORKER, [GRID, VILLAGE])
    assert op == Principal(op.token_id, "admin", Role.OPERATOR, frozenset())
    assert gw.role is Role.GRID_WORKER and gw.areas == {GRID, VILLAGE} and gw.name == "李娜"
    assert store.verify(op_token) == op
    assert store.verify(gw_token) == gw
    assert op.token_id != gw.token_id
    token_id, secret = split(gw_token)
    assert token_id == gw.token_id and len(token_id) == 12 and int(token_id, 16) >= 0
    assert len(secret) == 43
    # Saved: a fresh process reads the same tokens back.
    again = TokenStore.load(path)
    assert again.verify(op_token) == op and again.verify(gw_token) == gw
    assert again.list() == [op, gw]


def test_file_keeps_only_the_hash(store: TokenStore, path: Path) -> None:
    token, principal = store.add("admin", Role.OPERATOR)
    _, secret = split(token)
    text = path.read_text(encoding="utf-8")
    assert secret not in text and token not in text
    assert hashlib.sha256(secret.encode()).hexdigest() in text
    assert principal.token_id in text


@pytest.fixture
def token(store: TokenStore) -> str:
    return store.add("li.na", Role.GRID_WORKER, [GRID])[0]


MANGLED: dict[str, Callable[[str], str]] = {
    "empty": lambda t: "",
    "prefix only": lambda t: "cst_",
    "no prefix": lambda t: t.removeprefix("cst_"),
    "other prefix": lambda t: "csx" + t[3:],
    "upper-case prefix": lambda t: "CST" + t[3:],
    "missing secret": lambda t: t.rsplit("_", 1)[0] if t.count("_") == 2 else t[:17],
    "missing id": lambda t: "cst__" + split(t)[1],
    "secret cut short": lambda t: t[:-1],
    "secret one too long": lambda t: t + "A",
    "extra underscore before id": lambda t: "cst__" + t[4:],
    "extra underscore part": lambda t: t + "_extra",
    "underscore instead of last": lambda t: t[:-1] + "_",
    "upper-case id": lambda t: "cst_" + split(t)[0].upper() + "_" + split(t)[1],
    "full-width digit in id": lambda t: "cst_１" + t[5:],
    "unicode in secret": lambda t: t[:-1] + "é",
    "emoji": lambda t: t[:-2] + "🔑",
    "trailing newline": lambda t: t + "\n",
    "leading space": lambda t: " " + t,
    "with Bearer": lambda t: "Bearer " + t,
    "huge": lambda t: t + "A" * 1_000_000,
    "huge garbage": lambda t: "\x00" * 1_000_000,
    "nul in secret": lambda t: t[:-1] + "\x00",
}


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
def test_malformed_tokens_are_refused(
    store: TokenStore, token: str, mangle: Callable[[str], str]
) -> None:
    assert store.verify(token) is not None
    bad = mangle(token)
    assert bad != token
    assert store.verify(bad) is None


def test_wrong_secret_or_wrong_id_is_refused(store: TokenStore, token: str) -> None:
    other, _ = store.add("admin", Role.OPERATOR)
    token_id, secret = split(token)
    other_id, other_secret = split(other)
    flipped = ("B" if secret[0] == "A" else "A") + secret[1:]
    assert store.verify(f"cst_{token_id}_{flipped}") is None
    assert store.verify(f"cst_{token_id}_{other_secret}") is None  # a real secret, not its id
    assert store.verify(f"cst_{other_id}_{secret}") is None
    unknown_id = "0" * 12 if token_id != "0" * 12 else "1" * 12
    assert store.verify(f"cst_{unknown_id}_{secret}") is None


def test_verify_never_logs_the_token(
    store: TokenStore, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = split(token)
    assert store.verify(token) is not None
    assert store.verify(token[:-1] + "x") is None
    assert store.verify(token + "x") is None
    assert all(secret[:20] not in r.getMessage() for r in caplog.records)


def test_revoke(store: TokenStore, path: Path, token: str) -> None:
    keep, kept = store.add("admin", Role.OPERATOR)
    revoked = store.verify(token)
    assert revoked is not None
    assert store.revoke(revoked.token_id) is True
    assert store.verify(token) is None
    assert store.verify(keep) == kept
    assert store.list() == [kept]
    assert store.revoke(revoked.token_id) is False
    assert store.revoke("nonexistent") is False
    assert revoked.token_id not in path.read_text(encoding="utf-8")
    assert TokenStore.load(path).verify(token) is None


def test_a_missing_file_is_an_empty_store(path: Path) -> None:
    store = TokenStore.load(path)
    assert store.list() == []
    assert not path.exists()  # loading alone writes nothing
    assert store.reload_if_changed() is False


def test_reload_if_changed_picks_up_another_process(path: Path) -> None:
    server = TokenStore.load(path)
    cli = TokenStore.load(path)
    token, principal = cli.add("li.na", Role.GRID_WORKER, [GRID])
    assert server.verify(token) is None  # not read yet
    assert server.reload_if_changed() is True
    assert server.verify(token) == principal
    assert server.reload_if_changed() is False  # nothing new: no re-read

    # Saves in one clock tick still differ (new inode each save), so none is missed.
    second, _ = cli.add("wang", Role.OPERATOR)
    assert cli.revoke(principal.token_id)
    assert server.reload_if_changed() is True
    assert server.verify(token) is None
    assert server.verify(second) is not None

    path.unlink()
    assert server.reload_if_changed() is True
    assert server.verify(second) is None


def test_a_stale_store_does_not_drop_another_stores_token(path: Path) -> None:
    a = TokenStore.load(path)
    b = TokenStore.load(path)
    first, _ = a.add("one", Role.OPERATOR)
    second, _ = b.add("two", Role.OPERATOR)  # b read the file before a saved
    fresh = TokenStore.load(path)
    assert fresh.verify(first) is not None and fresh.verify(second) is not None


def test_file_mode_is_0600_and_no_temporary_file_is_left(
    path: Path, tmp_path: Path, token: str
) -> None:
    old = os.umask(0)  # a permissive umask must not make the file readable by others
    try:
        store = TokenStore.load(path)
        store.add("admin", Role.OPERATOR)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        principal = store.verify(token)
        assert principal is not None and store.revoke(principal.token_id)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.yaml"]


def test_a_file_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "tokens.yaml"
    token, principal = TokenStore.load(path).add("admin", Role.OPERATOR)
    assert TokenStore.load(path).verify(token) == principal


GOOD_ENTRY = (
    "- {id: 0123456789ab, name: admin, role: operator, areas: [], "
    "hash: " + "a" * 64 + ", created: '2025-01-01T00:00:00Z'}\n"
)
BAD_FILES = {
    "missing hash": (
        "- {id: abcdef012345, name: li, role: grid_worker, areas: [g1], "
        "created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): hash: Field required",
    ),
    "grid worker without areas": (
        "- {id: abcdef012345, name: li, role: grid_worker, areas: [], "
        "hash: " + "b" * 64 + ", created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): (entry): Value error, a grid_worker token needs at least one area",
    ),
    "operator with areas": (
        "- {id: abcdef012345, name: li, role: operator, areas: [g1], "
        "hash: " + "b" * 64 + ", created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): (entry): Value error, an operator token sees everything",
    ),
    "unknown field": (
        "- {id: abcdef012345, name: li, role: operator, secret: oops, "
        "hash: " + "b" * 64 + ", created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): secret: Extra inputs are not permitted",
    ),
    "unknown role": (
        "- {id: abcdef012345, name: li, role: device, "
        "hash: " + "b" * 64 + ", created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): role: Input should be "
        "'operator', 'grid_worker', 'person' or 'department'",
    ),
    "plaintext instead of hash": (
        "- {id: abcdef012345, name: li, role: operator, "
        "hash: cst_abcdef012345_secret, created: '2025-01-01T00:00:00Z'}\n",
        "[1] (id=abcdef012345): hash: String should match pattern",
    ),
    "naive created": (
        "- {id: abcdef012345, name: li, role: operator, "
        "hash: " + "b" * 64 + ", created: '2025-01-01T00:00:00'}\n",
        "[1] (id=abcdef012345): created: Input should have timezone info",
    ),
    "duplicate id": (
        GOOD_ENTRY.replace("admin", "again"),
        "[1] (id=0123456789ab): id: duplicate token id",
    ),
}


@pytest.mark.parametrize(("second", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_entry_is_named(path: Path, second: str, expected: str) -> None:
    path.write_text(GOOD_ENTRY + second, encoding="utf-8")
    with pytest.raises(TokensFileError) as caught:
        TokenStore.load(path)
    assert f"{path}: {expected}" in str(caught.value)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{a: 1}\n", "(file): must be a list"),
        ("- [unclosed\n", "(yaml)"),
        ("- just a string\n", "[0]: (entry): Input should be a valid dictionary"),
    ],
)
def test_a_bad_file_is_named(path: Path, text: str, expected: str) -> None:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TokensFileError, match=rf"^{path}: ") as caught:
        TokenStore.load(path)
    assert expected in str(caught.value)


def test_a_broken_file_is_never_overwritten_and_refuses_every_token(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = TokenStore.load(path)
    token, _ = server.add("admin", Role.OPERATOR)
    broken = path.read_text(encoding="utf-8").replace("role: operator", "role: root")
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(TokensFileError):
        server.add("other", Role.OPERATOR)
    assert path.read_text(encoding="utf-8") == broken  # a hand edit is not clobbered
    caplog.set_level(logging.ERROR, logger="ingest.api.tokens")
    assert server.reload_if_changed() is True
    assert server.verify(token) is None  # fail closed
    assert server.reload_if_changed() is False  # logged once, not per request
    assert len(caplog.records) == 1 and "role" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("name", "role", "areas", "expected"),
    [
        ("li", Role.GRID_WORKER, [], "needs at least one area"),
        ("li", Role.OPERATOR, [GRID], "takes no areas"),
        ("li\nINFO forged log line", Role.OPERATOR, [], "name: Value error, must be printable"),
        ("", Role.OPERATOR, [], "name: String should have at least 1 character"),
        ("li", Role.GRID_WORKER, ["no spaces allowed"], "areas.0: String should match"),
        ("li", Role.GRID_WORKER, [GRID, GRID], "more than once"),
    ],
)
def test_add_refuses_bad_entries_and_saves_nothing(
    store: TokenStore, path: Path, name: str, role: Role, areas: list[str], expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        store.add(name, role, areas)
    assert not path.exists() and store.list() == []


# --- who sees what ---------------------------------------------------------------------------


def _path_ids(registry: Registry, area_id: str) -> list[str]:
    return [a.id for a in registry.path_of(area_id).areas]


def test_an_operator_sees_everything(registry: Registry) -> None:
    operator = Principal("0123456789ab", "admin", Role.OPERATOR, frozenset())
    assert operator.sees(_path_ids(registry, OTHER_GRID))
    assert operator.sees([])


def test_a_grid_worker_bound_to_a_grid_sees_only_that_grid(registry: Registry) -> None:
    worker = Principal("0123456789ab", "li", Role.GRID_WORKER, frozenset({GRID}))
    assert worker.sees(_path_ids(registry, GRID))
    assert not worker.sees(_path_ids(registry, SIBLING_GRID))
    assert not worker.sees(_path_ids(registry, OTHER_GRID))
    assert not worker.sees(_path_ids(registry, VILLAGE))  # an alert at village level: above it
    assert not worker.sees([])
    device = next(registry.devices_in(GRID))
    assert worker.sees(registry.device_path(device.id).tags().values())


def test_a_grid_worker_bound_to_a_village_sees_its_grids(registry: Registry) -> None:
    worker = Principal("0123456789ab", "li", Role.GRID_WORKER, frozenset({VILLAGE}))
    assert registry.areas[VILLAGE].level is Level.VILLAGE
    assert worker.sees(_path_ids(registry, GRID))
    assert worker.sees(_path_ids(registry, SIBLING_GRID))
    assert not worker.sees(_path_ids(registry, OTHER_GRID))
    assert worker.sees(iter(_path_ids(registry, GRID)))  # any iterable, read once


# --- citysense tokens ------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir of its own and the example registry; returns the default tokens file."""
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    monkeypatch.delenv("CITYSENSE_API_TOKENS_FILE", raising=False)
    return tmp_path / "tokens.yaml"


def test_cli_add_list_revoke(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "add", "--name", "li.na", "--role", "grid_worker", "--area", GRID]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out.count("\n") == 1  # stdout is the token alone: TOKEN=$(citysense tokens add …)
    principal = TokenStore.load(cli_env).verify(token)
    assert principal is not None
    assert principal.name == "li.na" and principal.areas == {GRID}
    assert 'curl -H "Authorization: Bearer' in err and "shown only now" in err
    assert token not in err

    assert main(["tokens", "add", "--name", "ops", "--role", "operator"]) == 0
    operator_token = capsys.readouterr().out.strip()

    assert main(["tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"id": principal.token_id, "name": "li.na", "role": "grid_worker", "areas": [GRID]},
        {"id": split(operator_token)[0], "name": "ops", "role": "operator", "areas": []},
    ]
    assert main(["tokens", "list"]) == 0
    table = capsys.readouterr().out
    assert principal.token_id in table and "li.na" in table and GRID in table
    stored_hashes = [
        hashlib.sha256(split(t)[1].encode()).hexdigest() for t in (token, operator_token)
    ]
    assert not any(h in table for h in stored_hashes) and "hash" not in table

    assert main(["tokens", "revoke", principal.token_id]) == 0
    assert principal.token_id in capsys.readouterr().out
    assert TokenStore.load(cli_env).verify(token) is None
    assert TokenStore.load(cli_env).verify(operator_token) is not None
    assert main(["tokens", "revoke", principal.token_id]) == 1
    assert f"no token {principal.token_id}" in capsys.readouterr().err


def test_cli_area_binding_spans_levels_and_repeats(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tokens", "add", "--name", "w", "--role", "grid_worker", "--area", VILLAGE, OTHER_GRID]
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenStore.load(cli_env).verify(token)
    assert principal is not None and principal.areas == {VILLAGE, OTHER_GRID}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--role", "grid_worker", "--area", "nowhere"], "no area nowhere in"),
        (["--role", "grid_worker", "--area", GRID, "nowhere"], "no area nowhere in"),
        (["--role", "grid_worker"], "grid_worker needs --area"),
        (["--role", "operator", "--area", GRID], "operator takes no --area"),
        (["--role", "operator", "--name", "a\tb"], "must be printable"),
    ],
)
def test_cli_add_refuses_with_exit_2(
    cli_env: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    assert main(["tokens", "add", "--name", "li", *extra]) == 2
    out, err = capsys.readouterr()
    assert expected in err and out == ""
    assert not cli_env.exists()


def test_cli_unknown_role_is_a_usage_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["tokens", "add", "--name", "x", "--role", "device"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_tokens_file_setting_moves_the_file(
    cli_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path / "secrets" / "api-tokens.yaml"
    monkeypatch.setenv("CITYSENSE_API_TOKENS_FILE", str(elsewhere))
    assert main(["tokens", "add", "--name", "ops", "--role", "operator"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenStore.load(elsewhere).verify(token) is not None
    assert not cli_env.exists()


def test_cli_reports_a_broken_file(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_env.write_text("{not: a list}\n", encoding="utf-8")
    assert main(["tokens", "list"]) == 1
    assert f"{cli_env}: (file): must be a list" in capsys.readouterr().err


def test_ids_that_look_like_numbers_survive_and_collisions_are_redrawn(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # YAML would read an unquoted 012345678901 back as a number.
    drawn = iter(["012345678901", "012345678901", "000000000e10"])
    monkeypatch.setattr("ingest.api.tokens.secrets.token_hex", lambda n: next(drawn))
    store = TokenStore.load(path)
    first, p1 = store.add("one", Role.OPERATOR)
    second, p2 = store.add("two", Role.OPERATOR)
    assert (p1.token_id, p2.token_id) == ("012345678901", "000000000e10")
    again = TokenStore.load(path)
    assert again.verify(first) == p1 and again.verify(second) == p2
