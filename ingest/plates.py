"""Licence plates are personal data: only a keyed hash of a plate is ever stored."""

from __future__ import annotations

import hashlib
import hmac

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
