"""The sharing decision, in one place: may this department read this data set, in which areas,
which fields — or the named refusal. No I/O; the API asks it on every read of a department
token (ingest/api/sharing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

from devices.kinds import Kind
from ingest.sharing.config import DataSet, SharingClass, SharingRules, known_fields

# An area id → its path upwards, itself first (Registry.path_of, as ids).
PathOf = Callable[[str], Iterable[str]]


@dataclass(frozen=True, slots=True)
class Share:
    """What a department may read of one data set."""

    data_set: DataSet
    areas: frozenset[str]  # where (any level): rows of devices inside one of these
    fields: frozenset[str] | None  # which fields; None: the set has no field list (alerts)
    kinds: frozenset[Kind] | None = None  # alerts: of devices of these kinds; None: any
    grants: tuple[str, ...] = ()  # the grants it rests on (conditional sets)


class Refused(Exception):
    """The named refusal: ``code`` is the API's error code (403)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def narrow(areas: Iterable[str], within: Iterable[str], path_of: PathOf) -> frozenset[str]:
    """The areas inside both ``areas`` and ``within`` (each at any level): of two nested areas
    the inner one, of two apart neither."""
    outer = frozenset(within)
    out: set[str] = set()
    for a in areas:
        up = frozenset(path_of(a))
        if up & outer:
            out.add(a)  # a lies inside one of ``within``
        out.update(w for w in outer if a in frozenset(path_of(w)))  # w lies inside a
    return frozenset(out)


def decide(
    rules: SharingRules,
    department: str,
    areas: Iterable[str],
    data_set: DataSet,
    today: date,
    path_of: PathOf,
    requested: Iterable[str] | None = None,
) -> Share:
    """What ``department``, seeing ``areas`` (its units, narrowed by its token), may read of
    ``data_set`` on ``today`` (Asia/Shanghai); ``requested``: fields the caller names, each of
    which must be shared. Refused ``not_shared``, ``no_grant``, ``grant_expired`` or
    ``field_withheld``.

    Several valid grants of one department for one set: their areas add up, and the fields are
    those every one of them allows (never a field one grant gives in another grant's areas).
    """
    rule = rules.rule(data_set)
    mine = frozenset(areas)
    if rule.sharing is SharingClass.NOT_SHARED:
        raise Refused("not_shared", f"{data_set} is not shared with other departments (不予共享)")
    fields = (
        None if data_set is DataSet.ALERTS else frozenset(rule.fields or known_fields(data_set))
    )
    grants: tuple[str, ...] = ()
    if rule.sharing is SharingClass.CONDITIONAL:
        held = [g for g in rules.grants if g.department == department and data_set in g.data_sets]
        valid = [g for g in held if g.expires >= today]
        if not valid:
            if held:
                last = max(g.expires for g in held)
                raise Refused(
                    "grant_expired",
                    f"{department}'s grant for {data_set} expired after {last.isoformat()}",
                )
            raise Refused(
                "no_grant", f"{data_set} is shared on an approved grant; {department} has none"
            )
        mine = narrow(mine, (a for g in valid for a in g.areas), path_of)
        for g in valid:
            if fields is not None and g.fields is not None:
                fields &= frozenset(g.fields)
        grants = tuple(g.id for g in valid)
    if not mine:
        code = "no_grant" if rule.sharing is SharingClass.CONDITIONAL else "not_shared"
        raise Refused(code, f"{data_set} is shared with {department} in none of these areas")
    if requested is not None and fields is not None:
        withheld = sorted(set(requested) - fields)
        if withheld:
            raise Refused(
                "field_withheld", f"{data_set}: {', '.join(withheld)} not shared with {department}"
            )
    kinds = frozenset(rule.kinds) if rule.kinds is not None else None
    return Share(data_set, mine, fields, kinds, grants)
