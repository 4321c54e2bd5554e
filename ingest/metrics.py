"""Prometheus metrics for ``GET /metrics``.

Counts on the hot path stay plain integers where they are kept (the ledger, the alerting
side); a collector reads them at scrape time, so a message costs no metric call. Only what
has a distribution — write latency and batch size, once per batch — uses histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.intake.ledger import Ledger

# Batches are up to batch_size (5000 by default) points.
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Sources:
    """Where the scrape-time numbers come from (callables, read when scraped)."""

    ledger: Ledger
    in_flight: Callable[[], int]
    pending_batches: Callable[[], int]
    evaluated: Callable[[], int]
    eval_seconds: Callable[[], float]
    alerts_by_state: Callable[[], dict[str, int]]
    connected: Callable[[], bool]
    spool_points: Callable[[], int] = lambda: 0
    deadletters_pruned: Callable[[], dict[str, int]] = dict
    rule_failures: Callable[[], dict[str, int]] = dict
    rules_state_lost: Callable[[], bool] = lambda: False
    clock_skewed: Callable[[], int] = lambda: 0


def _one(
    family: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, value: float
) -> Metric:
    metric = family(name, doc)
    metric.add_metric([], value)
    return metric


def _labelled(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: dict[str, int],
) -> Metric:
    metric = family(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([str(key)], value)
    return metric


class _Collector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Metric]:
        s, ledger = self._s, self._s.ledger
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        rejected = sum(ledger.rejected.values())
        yield _one(
            counter, "citysense_messages_received", "MQTT messages received", ledger.received
        )
        yield _one(
            counter,
            "citysense_messages_accepted",
            "messages that passed validation (received − rejected)",
            ledger.received - rejected,
        )
        yield _labelled(
            counter,
            "citysense_messages_rejected",
            "messages dead-lettered, by reason",
            "reason",
            {str(k): v for k, v in ledger.rejected.items()},
        )
        yield _labelled(
            counter,
            "citysense_points_written",
            "points confirmed by InfluxDB, by measurement",
            "measurement",
            dict(ledger.written),
        )
        yield _one(
            gauge,
            "citysense_in_flight",
            "messages received and not yet written or dead-lettered",
            s.in_flight(),
        )
        yield _one(
            gauge,
            "citysense_pending_batches",
            "sealed batches waiting for InfluxDB (queue depth)",
            s.pending_batches(),
        )
        yield _one(gauge, "citysense_spool_points", "points in the on-disk spool", s.spool_points())
        yield _one(
            counter, "citysense_points_spooled", "points this run put in the spool", ledger.spooled
        )
        yield _one(
            counter,
            "citysense_rule_evaluations",
            "messages judged by the rule engine",
            s.evaluated(),
        )
        yield _one(
            counter,
            "citysense_rule_evaluation_seconds",
            "time spent in the rule engine",
            s.eval_seconds(),
        )
        yield _labelled(
            counter,
            "citysense_deadletters_pruned",
            "dead letters pruned past the per-reason cap, by reason (all time; write_rejected "
            "rows are the only copy of data InfluxDB refused)",
            "reason",
            s.deadletters_pruned(),
        )
        yield _labelled(
            counter,
            "citysense_rule_failures",
            "times a rule raised on a message or a tick (its verdict lost; the others go on)",
            "rule",
            s.rule_failures(),
        )
        yield _one(
            gauge,
            "citysense_rules_state_lost",
            "1 if the rules' saved state could not be (all) read at start (see /ready)",
            1 if s.rules_state_lost() else 0,
        )
        yield _labelled(gauge, "citysense_alerts", "alerts by state", "state", s.alerts_by_state())
        yield _one(
            gauge,
            "citysense_devices_clock_skewed",
            "devices whose clock is off by more than CITYSENSE_CLOCK_SKEW_WARN_S (see "
            "clock_skew_s in /devices/{id})",
            s.clock_skewed(),
        )
        yield _one(
            gauge,
            "citysense_broker_connected",
            "1 while subscribed to the broker",
            1 if s.connected() else 0,
        )


class Metrics:
    """The service's metrics registry."""

    def __init__(self, sources: Sources) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(sources))
        self._latency = Histogram(
            "citysense_write_seconds",
            "time to get a batch into InfluxDB, retries included",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "citysense_batch_points",
            "points per batch written",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, points: int, seconds: float) -> None:
        """One batch delivered."""
        self._latency.observe(seconds)
        self._batch.observe(points)

    def render(self) -> bytes:
        """The text exposition format (reads the stores: call it off the event loop)."""
        return generate_latest(self.registry)
