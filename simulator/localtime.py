"""Local time of the simulated city: China Standard Time, a fixed UTC+8 with no DST.

Daily cycles (rush hours, sunshine, water temperature) are defined in local hours; China has
had no daylight saving since 1991, so a fixed offset is exact and needs no tz database.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


def local_datetime(ts_ms: int) -> datetime:
    """Epoch milliseconds as an aware datetime in China Standard Time."""
    return datetime.fromtimestamp(ts_ms / 1000, CHINA_STANDARD_TIME)


def local_hour(ts_ms: int) -> float:
    """Hour of the local day as a fraction, 0.0 <= h < 24.0 (08:30 is 8.5)."""
    t = local_datetime(ts_ms)
    return t.hour + t.minute / 60 + (t.second + t.microsecond / 1e6) / 3600


def day_of_year(ts_ms: int) -> int:
    """Local day of the year, 1-366."""
    return local_datetime(ts_ms).timetuple().tm_yday


def sunshine(hour: float) -> float:
    """How much the sun shines at this local hour, 0 at night to 1 at noon.

    A half-sine from 06:00 to 18:00 is close enough for solar charging and for the daily swing
    of water temperature and dissolved oxygen.
    """
    if not 6.0 <= hour <= 18.0:
        return 0.0
    return math.sin(math.pi * (hour - 6.0) / 12.0)
