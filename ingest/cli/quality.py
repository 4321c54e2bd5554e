"""``citysense quality report``: the GB 3838-2002 period assessment and compliance rates
(达标率) of ``GET /quality``, printed as tables; read from InfluxDB directly, as the other
commands read their stores, through the same query and assessment code as the API."""

from __future__ import annotations

import argparse
import asyncio
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ingest.api.eventquery import DEFAULT_TZ
from ingest.api.qualityquery import GroupOut, QualityReport, quality_report
from ingest.cli.common import load_settings, print_json, registry_at
from rules.waterquality import TABLE


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser("quality", help="water quality over a day or a month (GB 3838-2002)")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("report", help="class per station, compliance rate per segment/county")
    q.add_argument("--period", choices=["day", "month"], default="day")
    q.add_argument("--date", help="YYYY-MM-DD (day) or YYYY-MM (month); default: the current")
    q.add_argument("--tz", default=DEFAULT_TZ, help=f"IANA time zone (default {DEFAULT_TZ})")
    q.add_argument("--by", choices=["segment", "county", "station"], default="segment")
    q.add_argument("--river", help="only this river (its id in the registry)")
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.add_argument("--json", action="store_true", help="the answer of GET /quality")
    q.set_defaults(func=cmd_quality)


def cmd_quality(args: argparse.Namespace) -> int:
    """Query InfluxDB for the period means and print the assessment."""
    from ingest.api.influxql import InfluxQueryError, QueryRefused

    settings = load_settings()
    registry = registry_at(args.registry or settings.registry)

    async def run() -> QualityReport:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            return await quality_report(
                http,
                settings.influx_url,
                settings.influx_database,
                registry,
                None,  # as an operator: this command reads InfluxDB itself
                kind=args.period,
                date_text=args.date,
                tz=args.tz,
                by=args.by,
                river=args.river,
                now=datetime.now(UTC),
            )

    try:
        report = asyncio.run(run())
    except QueryRefused as e:
        print(f"citysense quality: {e.message}", file=sys.stderr)
        return 2
    except InfluxQueryError as e:
        print(f"citysense quality: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json(report.model_dump(mode="json", by_alias=True))
    else:
        print_report(report)
    return 0


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    """Lines of a table whose columns line up with Chinese text in them."""
    cells = [list(map(str, header)), *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(width(r[i]) for r in cells) for i in range(len(header))]
    return [
        "  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]


def _rate(group: GroupOut) -> str:
    return "-" if group.rate is None else f"{group.rate:.1f}%"


def report_lines(report: QualityReport) -> list[str]:
    """The report as text: the period, a row per station, a row per group, the total."""
    p = report.period
    lines = [
        f"{report.standard}: {p.kind} {p.label} ({p.tz}, {p.start} .. {p.end})"
        + ("" if p.complete else ", not over yet"),
        "",
    ]
    short = {row.field: row.name for row in TABLE}
    rows = []
    for s in report.stations:
        means = [
            f"{s.parameters[f].mean:g}/{s.parameters[f].water_class}" if f in s.parameters else "-"
            for f in short
        ]
        target = s.target + ("*" if s.target_is_default else "")
        met = {True: "yes 达标", False: "NO 未达标", None: "not assessed 未评价"}[s.meets_target]
        rows.append(
            (
                s.device,
                s.name,
                s.segment_name or s.segment or "",
                target,
                s.water_class or "-",
                met,
                ",".join(short[f] for f in s.over_target),
                *means,
            )
        )
    header = ("station", "name 名称", "segment 河段", "target", "class", "meets", "over")
    lines += table(rows, (*header, *(f"{n} mean/class" for n in short.values())))
    if any(s.target_is_default for s in report.stations):
        lines.append("* no target_class in the registry: judged against class III")
    groups = [*report.groups, report.total]
    lines.append("")
    lines += table(
        [
            (g.id or "", g.name, g.assessed, g.meeting, _rate(g), " ".join(g.not_assessed) or "-")
            for g in groups
        ],
        (
            report.by if report.groups else "",
            "name 名称",
            "assessed",
            "meeting",
            "rate 达标率",
            "not assessed",
        ),
    )
    return lines


def print_report(report: QualityReport) -> None:
    """Print ``report_lines``."""
    print("\n".join(report_lines(report)))
