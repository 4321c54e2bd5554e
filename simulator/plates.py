"""Fake Chinese licence plates such as ``湘E·3K721`` for camera and barrier events.

Plates are never real: the serials are random, and the ingest service stores only a keyed hash
of them anyway. Most cars in a Shaoyang simulation are local (湘E), some from elsewhere in
Hunan, a few from neighbouring provinces.
"""

from __future__ import annotations

import random

from simulator.stochastic import pick

_REGIONS = {
    "湘E": 70.0,  # Shaoyang
    "湘A": 6.0,  # Changsha
    "湘D": 3.0,  # Hengyang
    "湘K": 3.0,  # Loudi
    "湘M": 3.0,  # Yongzhou
    "湘N": 3.0,  # Huaihua
    "湘F": 2.0,  # Yueyang
    "湘C": 2.0,  # Xiangtan
    "粤B": 2.0,  # Shenzhen: migrant workers driving home
    "桂C": 2.0,  # Guilin, just across the border
    "鄂A": 2.0,  # Wuhan
    "贵A": 2.0,  # Guiyang
}
# Serial letters skip I and O, which plates never use because they read as 1 and 0.
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_DIGITS = "0123456789"


def fake_plate(rng: random.Random) -> str:
    """A random plausible plate: region, a middle dot, then the serial."""
    region = pick(rng, _REGIONS)
    if rng.random() < 0.15:
        # New-energy (green) plates: D (electric) or F (hybrid) and five digits.
        serial = rng.choice("DF") + "".join(rng.choices(_DIGITS, k=5))
    else:
        chars = [rng.choice(_DIGITS) for _ in range(5)]
        for i in rng.sample(range(5), k=rng.choice((0, 0, 1, 1, 2))):
            chars[i] = rng.choice(_LETTERS)
        serial = "".join(chars)
    return f"{region}·{serial}"
