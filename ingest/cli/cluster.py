"""The workers of a cluster: which one owns which partitions, and how far each has read.

With ``CITYSENSE_BROKER=mosquitto`` there is no cluster: ``cluster status`` says so and exits
0; with ``--json`` it prints ``{"broker": "mosquitto", "cluster": null}`` (a cluster's JSON has
``"broker": "nats"``), so a script tells the two apart by ``broker``.
"""

from __future__ import annotations

import argparse
import time

from ingest.cli.common import print_json, print_table, store_settings
from ingest.cluster.status import ClusterStatus, partition_ranges

NO_CLUSTER = "no cluster: CITYSENSE_BROKER is mosquitto (one service, no partitions)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser("cluster", help="the workers of a cluster (CITYSENSE_BROKER=nats)")
    csub = p.add_subparsers(dest="action", required=True)
    q = csub.add_parser("status", help="which worker owns which partitions, how far each read")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_cluster_status)


def cmd_cluster_status(args: argparse.Namespace) -> int:
    """Print the cluster's workers and partitions, read from the shared database."""
    from ingest.alerts.store import store_url
    from ingest.cluster.leases import Leases
    from ingest.cluster.status import read_cluster_status

    settings = store_settings()
    if settings.broker != "nats":
        # Not an error: a single service is a valid setup, there is just nothing to show.
        if args.json:
            print_json({"broker": settings.broker, "cluster": None})
        else:
            print(NO_CLUSTER)
        return 0
    database = settings.database_url.get_secret_value() if settings.database_url else None
    # Same database and lease period as the workers (ingest/service.py), so "alive" and
    # "held" mean here what they mean to them.
    leases = Leases(
        store_url(database, settings.data_dir), settings.partitions, round(settings.lease_s * 1000)
    )
    try:
        status = read_cluster_status(leases, int(time.time() * 1000))
    finally:
        leases.close()
    if args.json:
        print_json(status.model_dump(mode="json"))
    else:
        print_status(status)
    return 0


def print_status(status: ClusterStatus) -> None:
    """One line per worker, then the partitions nobody holds."""
    print(
        f"{status.partition_count} partitions, lease {status.lease_s:g} s, "
        f"{sum(w.alive for w in status.workers)} of {len(status.workers)} workers alive"
    )
    rows = [
        (
            w.worker,
            "alive" if w.alive else "gone",
            partition_ranges(w.partitions),
            w.read,
            ago(w.read_ms, status.now_ms),
        )
        for w in status.workers
    ]
    if rows:
        print_table(rows, ("worker", "state", "partitions", "read", "last read"))
    if status.unowned:
        print(f"unowned: {partition_ranges(status.unowned)}")


def ago(ms: int, now_ms: int) -> str:
    """How long before ``now_ms`` the wall time ``ms`` was; ``-`` for never (0)."""
    if ms <= 0:
        return "-"
    seconds = max(0.0, (now_ms - ms) / 1000)  # clamped: another host's clock may run ahead
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
