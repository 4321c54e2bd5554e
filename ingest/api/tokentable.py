"""API tokens in the shared database (``CITYSENSE_DATABASE_URL``): every worker of a cluster
accepts a token added through any of them or the CLI (issue 16). The same entries and checks
as the file store (``tokens.py``), kept in a table and re-read at most once a second."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from pydantic import (
    BaseModel,
    ValidationError,
)
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from ingest.api.tokens import (
    _ID_HEX_CHARS,
    Principal,
    Role,
    TokenEntry,
    TokenStore,
    _new_entry,
    tokens_path,
)
from ingest.settings import Settings
from ingest.transactions import WRITE, open_engine, serialise_writers

log = logging.getLogger(__name__)


metadata = MetaData()
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # the order of adding
    Column("id", String(_ID_HEX_CHARS), nullable=False, unique=True),  # never reused
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("areas", JSON, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),  # kept, so who had access stays known
)
# The tokens' own writers' turn on PostgreSQL (ingest/transactions.py): ``add`` checks its id is
# free and inserts it with no other writer in between.
TOKENS_LOCK = 0x54_4F_4B_4E  # "TOKN"
# A worker re-reads the table at most this often, however many requests (or misses: a flood
# of bad tokens) ask: a token added elsewhere works within about this long.
RELOAD_MIN_S = 1.0


def _on_event_loop() -> bool:
    """Whether the caller runs on an asyncio event loop (which must never wait for I/O)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Row(BaseModel):
    """A row of ``api_tokens`` as read; validated into a TokenEntry at this boundary."""

    id: str
    name: str
    role: str
    areas: builtins.list[str]
    hash: str
    created_ms: int

    def entry(self) -> TokenEntry:
        """The entry; ValidationError if a hand-written row is not a valid token."""
        created = datetime.fromtimestamp(self.created_ms / 1000, UTC)
        return TokenEntry.model_validate(
            {**self.model_dump(exclude={"created_ms"}), "created": created}
        )


class TableTokenStore(TokenStore):
    """The tokens of the shared database's ``api_tokens`` table (``CITYSENSE_DATABASE_URL``).

    ``verify`` reads memory only, as the file store's; ``reload_if_changed`` re-reads the
    (small) table at most once per ``min_interval_s``. Thread-safe; the table is created if
    missing.
    """

    def __init__(
        self,
        url: str,
        *,
        min_interval_s: float = RELOAD_MIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(None)
        self._url = url
        self._engine = open_engine(url)
        self._writer = self._engine.execution_options(**{WRITE: True})
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._read_at = clock()
        self._failing = False  # the last read failed (logged once per outage)
        self._bad: set[str] = set()  # ids of invalid rows, logged once each
        with self._writer.begin() as conn:  # in turn, so two workers may start together
            serialise_writers(conn, TOKENS_LOCK)
            metadata.create_all(conn)
        self._set(self._read(), None)  # raises if unreachable: a server must not start blind

    @property
    def where(self) -> str:
        """The database, its password hidden."""
        return f"the database {make_url(self._url).render_as_string(hide_password=True)}"

    def close(self) -> None:
        """Release the database's connections."""
        self._engine.dispose()

    def _read(self) -> dict[str, TokenEntry]:
        """The tokens not revoked, oldest first; an invalid row is left out (refused)."""
        query = (
            select(*(api_tokens.c[k] for k in _Row.model_fields))
            .where(api_tokens.c.revoked_ms.is_(None))
            .order_by(api_tokens.c.seq)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        entries: dict[str, TokenEntry] = {}
        for row in rows:
            try:
                entry = _Row.model_validate(dict(row)).entry()
            except ValidationError as e:
                if row["id"] not in self._bad:  # once, not every second
                    self._bad.add(row["id"])
                    log.error(
                        "api_tokens row %s is invalid, its token is refused: %s", row["id"], e
                    )
                continue
            entries[entry.id] = entry
        return entries

    def _reread(self) -> bool:
        """Read the table now (the lock held); True if the tokens changed."""
        self._read_at = self._clock()
        try:
            entries = self._read()
        except SQLAlchemyError as e:
            # Keep the tokens last read: no one can revoke while the database is down either,
            # and the API stays usable through a short outage.
            if not self._failing:
                log.warning("cannot read the API tokens, using those last read: %s", e)
            self._failing = True
            return False
        self._failing = False
        if entries == self._entries:
            return False
        self._set(entries, None)
        return True

    def _due(self) -> bool:
        return self._clock() - self._read_at >= self._min_interval_s

    def _reload_if_due(self) -> bool:
        with self._lock:  # a caller arriving during a read waits for it, then uses its result
            return self._reread() if self._due() else False

    def reload_if_changed(self) -> bool:
        """Re-read the table if ``min_interval_s`` has passed since the last read; True if
        the tokens changed.

        Called on the event loop (the alert stream checks revocation), it never waits: the
        read runs in the loop's executor, and a later call sees what it found.
        """
        if not _on_event_loop():
            return self._reload_if_due()
        if self._due():
            asyncio.get_running_loop().run_in_executor(None, self._reload_if_due)
        return False

    def add(self, name: str, role: Role, areas: Iterable[str] = ()) -> tuple[str, Principal]:
        """Create a token, insert its row and return the token text (shown only now)."""
        with self._writer.begin() as conn:
            serialise_writers(conn, TOKENS_LOCK)
            token, entry = _new_entry(name, role, areas, lambda i: _exists(conn, i))
            conn.execute(
                api_tokens.insert().values(
                    id=entry.id,
                    name=entry.name,
                    role=entry.role.value,
                    areas=list(entry.areas),
                    hash=entry.hash,
                    created_ms=int(entry.created.timestamp() * 1000),
                )
            )
        with self._lock:
            self._reread()
        return token, entry.principal()

    def revoke(self, token_id: str) -> bool:
        """Mark a token revoked; False if there was no such token not yet revoked."""
        now_ms = int(time.time() * 1000)
        with self._writer.begin() as conn:
            serialise_writers(conn, TOKENS_LOCK)
            done: int = conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_ms.is_(None))
                .values(revoked_ms=now_ms)
            ).rowcount
        with self._lock:
            self._reread()
        return done > 0


def _exists(conn: Connection, token_id: str) -> bool:
    """Whether any row, revoked or not, has ``token_id``: ids are never reused."""
    return conn.scalar(select(api_tokens.c.seq).where(api_tokens.c.id == token_id)) is not None


def open_tokens(settings: Settings) -> TokenStore:
    """The tokens of ``CITYSENSE_DATABASE_URL`` if set, else of the tokens file."""
    if settings.database_url is not None:
        return TableTokenStore(settings.database_url.get_secret_value())
    return TokenStore.load(tokens_path(settings))
