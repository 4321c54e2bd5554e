"""Licence plates are personal data: only a keyed hash of a plate is ever stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable

# Separators and spaces vary by camera firmware ("湘E·12345", "湘E 12345"): the same plate
# must hash the same, so they are removed before hashing.
_SEPARATORS = str.maketrans("", "", " ·.-_\t")


def normalise_plate(plate: str) -> str:
    """The canonical form of a plate: no separators, upper case."""
    return plate.translate(_SEPARATORS).upper()


class PlateHasher:
    """HMAC-SHA256 of the normalised plate, truncated to 128 bits of hex."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, plate: str) -> str:
        """The stored stand-in for ``plate``."""
        digest = hmac.new(self._key, normalise_plate(plate).encode(), hashlib.sha256)
        return digest.hexdigest()[:32]


# A JSON string literal, possibly cut off by truncation (no closing quote at the very end).
_STRING = rb'"(?:[^"\\]|\\.)*(?:"|\\?$)'
# A value: a string, an array (up to its first "]"), or any other token up to "," or "}".
_VALUE = _STRING + rb"|\[[^\]]*\]?|[^,}\s][^,}]*"
_MEMBER = re.compile(rb"(" + _STRING + rb")(\s*:\s*)(" + _VALUE + rb")", re.DOTALL)


def _is_plate_key(literal: bytes) -> bool:
    """Whether a JSON key literal names a plate, however its characters are escaped."""
    try:
        key = json.loads(literal)
    except ValueError:
        # Cut off or broken: judge what can be read of it.
        key = literal.strip(b'"').decode("utf-8", errors="replace")
    return isinstance(key, str) and key.strip().lower() == "plate"


def redact_plates(payload: bytes, hash_plate: Callable[[str], str]) -> bytes:
    """``payload`` with every ``"plate": "..."`` value replaced by its keyed hash.

    For what is kept of a rejected message (dead letters): it failed validation, so it may be
    any text — broken JSON, a cut-off string, a key spelt with escapes (``"pl\\u0061te"``) —
    and the plate must not be kept in clear in any of these. The operator can still match the
    hash against the plate_hash of stored events.
    """
    if b"plate" not in payload.lower() and b"\\u" not in payload:
        return payload  # the common case, and cheap: no key can spell "plate"

    def replace(m: re.Match[bytes]) -> bytes:
        if not _is_plate_key(m.group(1)):
            return m.group(0)
        raw = m.group(3)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip(b'"').decode("utf-8", errors="replace")
        hashed = hash_plate(value if isinstance(value, str) else json.dumps(value))
        return m.group(1) + m.group(2) + b'"plate_hash:' + hashed.encode() + b'"'

    return _MEMBER.sub(replace, payload)
