"""Licence plates are personal data: only a keyed hash of a plate is ever stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

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
# How a hashed plate reads in what is kept.
_HASHED = b"plate_hash:"
_HASHED_VALUE = re.compile(rb'"' + _HASHED + rb'[0-9a-f]{32}"')
# A key that names a plate field, not one that carries a plate in its name.
_PLATE_FIELD = re.compile(r"\s*[a-z_\- ]*plate[a-z_\- ]*\s*")
_HASHED_STRING = re.compile(_HASHED.decode() + "[0-9a-f]{32}")
_MEMBER = re.compile(rb"(" + _STRING + rb")(\s*:\s*)(" + _VALUE + rb")", re.DOTALL)


def _is_plate_key(literal: bytes) -> bool:
    """Whether a JSON key literal may name a plate, however it is escaped, cased or spelt.

    Any key that says "plate" ("plate_no", "Plate", fullwidth letters) counts: a firmware
    that names the field differently still sends a plate, and a dead letter loses nothing
    an operator needs by hashing a "plate_confidence" too.
    """
    return _mentions_plate(_key_text(literal))


def _key_text(literal: bytes) -> str:
    try:
        key = json.loads(literal)
    except ValueError:
        return literal.strip(b'"').decode("utf-8", errors="replace")
    return key if isinstance(key, str) else ""


def _hash_members(payload: bytes, hash_plate: Callable[[str], str]) -> bytes | None:
    """``payload`` with every ``"plate": value`` member's value replaced by its keyed hash;
    None if a plate's value is an object the member pattern cannot see the end of (its first
    comma ends the match, so the rest of it would be kept in clear)."""
    unbounded: list[bool] = []

    def replace(m: re.Match[bytes]) -> bytes:
        if not _is_plate_key(m.group(1)):
            return m.group(0)
        raw = m.group(3)
        if raw.startswith(b"{"):
            unbounded.append(True)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip(b'"').decode("utf-8", errors="replace")
        hashed = hash_plate(value if isinstance(value, str) else json.dumps(value))
        return m.group(1) + m.group(2) + b'"' + _HASHED + hashed.encode() + b'"'

    redacted = _MEMBER.sub(replace, payload)
    return None if unbounded else redacted


_U_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _folded(text: str) -> str:
    """``text`` as a reader would see it: \\u escapes read, width and case folded."""
    text = _U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return unicodedata.normalize("NFKC", text).casefold()


def _mentions_plate(text: str) -> bool:
    return "plate" in _folded(text)


def _is_plate_field(key: str) -> bool:
    return _PLATE_FIELD.fullmatch(_folded(key)) is not None


def _hashed_member(key: str, value: Any) -> bool:
    """Whether a member is a plate field whose value is a hash: all that may say "plate"."""
    return _is_plate_field(key) and isinstance(value, str) and bool(_HASHED_STRING.fullmatch(value))


def _strings_mention_plate(value: Any) -> bool:
    """Whether any string in parsed JSON, other than a hashed plate, says "plate"."""
    if isinstance(value, str):
        return not _HASHED_STRING.fullmatch(value) and _mentions_plate(value)
    if isinstance(value, list):
        return any(_strings_mention_plate(v) for v in value)
    if isinstance(value, dict):
        return any(
            not _hashed_member(k, v) and (_mentions_plate(k) or _strings_mention_plate(v))
            for k, v in value.items()
        )
    return False


def _fully_redacted(redacted: bytes) -> bool:
    """Whether nothing in ``redacted`` can still be a plate in clear.

    Strict JSON is judged by its parsed keys and strings. Anything else — single quotes, bare
    keys, "=" for ":", an array of pairs, form encoding, a cut-off message — is only trusted
    if, once the hashed plate fields are taken out, it never says "plate" at all.
    """
    try:
        parsed = json.loads(redacted)
    except (ValueError, UnicodeDecodeError):
        rest = _MEMBER.sub(_drop_hashed_member, redacted).decode("utf-8", errors="replace")
        return not _mentions_plate(rest)
    return not _strings_mention_plate(parsed)


def _drop_hashed_member(m: re.Match[bytes]) -> bytes:
    hashed = _HASHED_VALUE.fullmatch(m.group(3)) and _is_plate_field(_key_text(m.group(1)))
    return b"" if hashed else m.group(0)


def withheld(payload: bytes, hash_plate: Callable[[str], str]) -> bytes:
    """What is kept instead of a payload that may hold a plate the redactor cannot find.

    The length and a keyed hash still let an operator tell messages apart and match a
    device's log against what was rejected, without the plate.
    """
    fingerprint = hash_plate(payload.hex())
    return json.dumps(
        {"withheld": "may_contain_plate", "bytes": len(payload), "payload_hash": fingerprint}
    ).encode()


def redact_plates(payload: bytes, hash_plate: Callable[[str], str]) -> bytes:
    """``payload`` with every ``"plate": "..."`` value replaced by its keyed hash.

    For what is kept of a rejected message (dead letters): it failed validation, so it may be
    any text — broken JSON, a cut-off string, a key spelt with escapes (``"pl\\u0061te"``),
    single quotes, bare keys, an array of pairs — and the plate must not be kept in clear in
    any of these. The operator can still match the hash against the plate_hash of stored
    events. What cannot be redacted with certainty is withheld whole (``withheld``).
    """
    lowered = payload.lower()
    if b"plate" not in lowered and b"\\u" not in payload and payload.isascii():
        return payload  # the common case, and cheap: nothing can spell "plate"
    if not _mentions_plate(payload.decode("utf-8", errors="replace")):
        return payload
    redacted = _hash_members(payload, hash_plate)
    if redacted is not None and _fully_redacted(redacted):
        return redacted
    return withheld(payload, hash_plate)
