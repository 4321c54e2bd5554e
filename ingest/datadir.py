"""The data directory is private: 0700, and every file of ours in it 0600.

It holds what must not be readable by other local users: dead letters (rejected payloads),
the alert store, the spool (acknowledged readings not yet in InfluxDB) and token hashes.
Files are created with their mode rather than chmod'ed after, so no moment exists when one
is readable; a directory or file left wider by an earlier version is narrowed at start.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; make it 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create an empty ``path`` 0600 if missing (SQLite then keeps its -wal/-shm alike)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    os.chmod(path, FILE_MODE)
    return path


def create_private(path: Path) -> int:
    """Open a new file for writing, 0600 from its first moment; fails if it exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
