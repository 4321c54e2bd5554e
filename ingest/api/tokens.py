"""Bearer tokens of the HTTP API (docs/security.md): who may call it, and which areas they see.

A token reads ``cst_<id>_<secret>``: the id is a lookup key, not secret; the secret is
random. The tokens file (YAML, mode 0600) keeps only the SHA-256 of each secret, so reading
the file does not let anyone call the API. ``citysense tokens add`` writes the file and a
running server picks it up through ``TokenStore.reload_if_changed``. ``verify`` takes the
token alone, the part after ``Authorization: Bearer``.

With ``CITYSENSE_DATABASE_URL`` (a cluster's workers, issue 16) the tokens are rows of the
shared database's ``api_tokens`` table instead (``tokentable.TableTokenStore``, same hashes,
revoked rows kept with their time), so a token added on any host is accepted by every worker
within about a second (``tokentable.open_tokens`` picks one or the other).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from devices.registry import AreaId
from ingest.settings import Settings
from rules.alerts import check_person

log = logging.getLogger(__name__)

PREFIX = "cst"
_ID_HEX_CHARS = 12  # 48 bits: enough to keep ids of one file apart, and short to type
_SECRET_BYTES = 32
# token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet (no padding).
_TOKEN = re.compile(rf"{PREFIX}_([0-9a-f]{{{_ID_HEX_CHARS}}})_([A-Za-z0-9_-]{{43}})")
TOKEN_LENGTH = len(PREFIX) + 1 + _ID_HEX_CHARS + 1 + 43
# Compared against when the id is unknown, so a miss costs what a wrong secret costs.
_NO_HASH = "0" * 64
_DEPARTMENT = re.compile(r"[a-z][a-z0-9_]{0,63}")  # devices/responsibility.py DepartmentId


class Role(StrEnum):
    """What a token may do."""

    OPERATOR = "operator"  # everything
    GRID_WORKER = "grid_worker"  # only the devices and alerts of its areas
    # A person of the people file (ingest/people.py), named by the token's name: sees what
    # their posts see, as the file says now (a post moved in the file moves their view).
    PERSON = "person"
    # Another department (docs/security.md "Sharing with departments"), named by its registry
    # id: reads only what config/sharing.yaml shares with it, every read audited.
    DEPARTMENT = "department"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a valid token stands for."""

    token_id: str
    name: str
    role: Role
    areas: frozenset[str]  # empty for operators; a person's: where they may look at devices
    # Audience keys told to them (rules/audiences.py): a person's posts and ``person/{name}``.
    audiences: frozenset[str] = frozenset()
    person: str | None = None  # the people file's username a PERSON token stands for
    # Whether everything inside ``areas`` is theirs — alerts, cases (a grid worker, as before);
    # a chief or a department sees only the alerts told to its posts and its own cases, though
    # it may look at the devices of its areas.
    area_wide: bool = True
    department: str | None = None  # the registry department a DEPARTMENT token stands for

    def sees(self, area_ids: Iterable[str]) -> bool:
        """Whether something whose area path (grid up to city) is ``area_ids`` is visible."""
        if self.role is Role.OPERATOR:
            return True
        # The path holds every level, so a binding to a village covers all grids beneath it.
        return not self.areas.isdisjoint(area_ids)

    def sees_alert(self, area_ids: Iterable[str], audiences: Iterable[str]) -> bool:
        """Whether an alert placed at ``area_ids`` and told to ``audiences`` is theirs."""
        if self.role is Role.OPERATOR:
            return True
        if self.area_wide and self.sees(area_ids):
            return True
        return not self.audiences.isdisjoint(audiences)


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names the file, entry and field."""

    def __init__(self, path: Path, problems: builtins.list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + f"\n{path}: ".join(problems))


class TokenEntry(BaseModel):
    """One token as stored: everything but the secret, which is kept only as its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^[0-9a-f]{{{_ID_HEX_CHARS}}}$")
    name: str = Field(min_length=1, max_length=64)
    role: Role
    areas: tuple[AreaId, ...] = ()
    hash: str = Field(pattern="^[0-9a-f]{64}$")
    created: AwareDatetime

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        # Names are printed in tables and logs: no newlines or bidi tricks in them.
        if not name.isprintable() or name != name.strip():
            raise ValueError("must be printable, without leading or trailing spaces")
        return name

    @model_validator(mode="after")
    def _areas_fit_role(self) -> TokenEntry:
        if self.role is Role.GRID_WORKER and not self.areas:
            raise ValueError("a grid_worker token needs at least one area")
        if self.role is Role.OPERATOR and self.areas:
            raise ValueError("an operator token sees everything and takes no areas")
        if self.role is Role.PERSON and self.areas:
            raise ValueError("a person's token sees what the people file gives them: no areas")
        if self.role is Role.DEPARTMENT and not _DEPARTMENT.fullmatch(self.name):
            raise ValueError("a department token is named by its department id, e.g. ecology_env")
        if len(set(self.areas)) != len(self.areas):
            raise ValueError("areas are listed more than once")
        return self

    def principal(self) -> Principal:
        """The caller this entry stands for."""
        department = self.name if self.role is Role.DEPARTMENT else None
        return Principal(
            self.id, self.name, self.role, frozenset(self.areas), department=department
        )


def tokens_path(settings: Settings) -> Path:
    """The tokens file: ``CITYSENSE_API_TOKENS_FILE``, else ``<data_dir>/tokens.yaml``."""
    return settings.api_tokens_file or settings.data_dir / "tokens.yaml"


def _hash(secret: str) -> str:
    # The secret is 256 random bits, not a password: nothing to brute-force, so a slow
    # password hash (bcrypt, argon2) would only make every request slower.
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


# (mtime, size, inode): os.replace gives every save a new inode, so even two saves within
# one mtime tick are told apart.
_Signature = tuple[int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _entry_name(index: int, raw: Any) -> str:
    ident = raw.get("id") if isinstance(raw, dict) else None
    return f"[{index}]" + (f" (id={ident})" if ident is not None else "")


def _parse(path: Path, text: str) -> dict[str, TokenEntry]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TokensFileError(path, [f"(yaml): {e}"]) from None
    if data is None:  # an empty file: no tokens yet
        return {}
    if not isinstance(data, list):
        raise TokensFileError(path, ["(file): must be a list of token entries"])
    problems: builtins.list[str] = []
    entries: dict[str, TokenEntry] = {}
    for i, raw in enumerate(data):
        try:
            entry = TokenEntry.model_validate(raw)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                field = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(f"{_entry_name(i, raw)}: {field}: {err['msg']}")
            continue
        if entry.id in entries:
            problems.append(f"{_entry_name(i, raw)}: id: duplicate token id")
        entries[entry.id] = entry
    if problems:
        raise TokensFileError(path, problems)
    return entries


def _read(path: Path) -> tuple[dict[str, TokenEntry], _Signature | None]:
    """The entries of ``path`` and the signature of the file they were read from."""
    try:
        with path.open("rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            raw = f.read()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        raise TokensFileError(path, [f"(read): {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokensFileError(path, [f"(file): not UTF-8: {e}"]) from None
    return _parse(path, text), signature


_HEADER = (
    "# citysense API tokens, written by `citysense tokens add|revoke`.\n"
    "# Only a SHA-256 of each secret is kept: a lost token cannot be recovered, only revoked.\n"
)


def _write(path: Path, entries: Iterable[TokenEntry]) -> _Signature:
    """Save atomically with mode 0600; return the new file's signature."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = [e.model_dump(mode="json") for e in entries]
    text = _HEADER + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    # mkstemp creates the file 0600 whatever the umask, so no moment exists where the
    # hashes are readable by others; os.replace then swaps it in whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return _signature(path.stat())


def _new_entry(
    name: str, role: Role, areas: Iterable[str], taken: Callable[[str], bool]
) -> tuple[str, TokenEntry]:
    """A fresh token (its text, shown only once) and its entry, with an id not ``taken``.

    ValueError naming the field if the entry would be invalid; ReservedActor if ``name`` is
    the rules' own actor: a token's name signs its acks and resolves.
    """
    check_person(name)
    token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
    while taken(token_id):
        token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    try:
        entry = TokenEntry(
            id=token_id,
            name=name,
            role=role,
            areas=tuple(areas),
            hash=_hash(secret),
            created=datetime.now(UTC).replace(microsecond=0),
        )
    except ValidationError as e:
        raise ValueError(
            "; ".join(
                ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
                if err["loc"]
                else err["msg"]
                for err in e.errors(include_url=False)
            )
        ) from None
    return f"{PREFIX}_{token_id}_{secret}", entry


class TokenStore:
    """The tokens of one file, by id; ``verify`` is what the HTTP API calls per request."""

    def __init__(
        self,
        path: Path | None,
        entries: dict[str, TokenEntry] | None = None,
        signature: _Signature | None = None,
    ) -> None:
        self.path = path  # None: the tokens are in a database (TableTokenStore)
        self._lock = threading.Lock()
        self._set(entries or {}, signature)

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Read ``path`` (a missing file is an empty store); raise TokensFileError if bad."""
        entries, signature = _read(path)
        return cls(path, entries, signature)

    @property
    def where(self) -> str:
        """Where the tokens are kept, for messages."""
        return str(self.path)

    def _file(self) -> Path:
        assert self.path is not None, "only a TableTokenStore has no file"
        return self.path

    def _set(self, entries: dict[str, TokenEntry], signature: _Signature | None) -> None:
        # ``verify`` reads only ``_by_id``, assigned once: other threads see old or new, whole.
        self._entries = entries
        self._by_id = {i: (e.hash, e.principal()) for i, e in entries.items()}
        self._signature = signature

    def _current_signature(self) -> _Signature | None:
        try:
            return _signature(self._file().stat())
        except FileNotFoundError:
            return None

    def _refresh_for_write(self) -> None:
        """Re-read a file changed by someone else, so a save does not undo their change."""
        if self._current_signature() != self._signature:
            self._set(*_read(self._file()))  # raises on a bad file: never overwrite it blindly

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last read or save; True if it did.

        One ``stat`` when nothing changed, so it is cheap enough to call per request. A file
        that has become unreadable or invalid empties the store (every token fails) and is
        logged once: a revocation typed into a broken file must not leave the token valid.
        """
        with self._lock:
            signature = self._current_signature()
            if signature == self._signature:
                return False
            try:
                self._set(*_read(self._file()))
            except TokensFileError as e:
                log.error("tokens file unusable, every API token is refused until fixed: %s", e)
                self._set({}, signature)
            return True

    def add(self, name: str, role: Role, areas: Iterable[str] = ()) -> tuple[str, Principal]:
        """Create a token, save the file and return the token text (shown only now).

        ReservedActor if ``name`` is the rules' own actor: a token's name signs its acks and
        resolves. A file edited by hand may still hold one; the store refuses its steps.
        """
        with self._lock:
            self._refresh_for_write()
            token, entry = _new_entry(name, role, areas, lambda i: i in self._entries)
            entries = {**self._entries, entry.id: entry}
            self._set(entries, _write(self._file(), entries.values()))
            return token, entry.principal()

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid token; None for anything malformed, unknown or revoked."""
        # Never log ``token``: a wrong one is often a right one with a typo.
        if not isinstance(token, str) or len(token) != TOKEN_LENGTH:
            return None
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        found = self._by_id.get(token_id)
        stored, principal = found if found else (_NO_HASH, None)
        return principal if hmac.compare_digest(_hash(secret), stored) else None

    def is_active(self, token_id: str) -> bool:
        """Whether the token ``token_id`` still exists (not revoked)."""
        return token_id in self._by_id

    def list(self) -> builtins.list[Principal]:
        """Every token's principal, oldest first."""
        return [principal for _, principal in self._by_id.values()]

    def revoke(self, token_id: str) -> bool:
        """Remove a token and save the file; False if there was no such token."""
        with self._lock:
            self._refresh_for_write()
            if token_id not in self._entries:
                return False
            entries = {i: e for i, e in self._entries.items() if i != token_id}
            self._set(entries, _write(self._file(), entries.values()))
            return True
