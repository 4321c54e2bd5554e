"""The delivery parts of a running service, built together: the store (on the alert store's
database), the plan from the channels file, and the sender task (with the pushes' periodic
task beside it where a push has ``observations_every``: ``push.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from devices.registry import Registry
from ingest.channels.config import ChannelsConfig, ChannelsError, load_channels
from ingest.cluster.seat import Seat
from ingest.delivery.dispatch import Expander
from ingest.delivery.plan import ChannelPlan, plan_of
from ingest.delivery.push import InfluxRows, ObservationPushes, PushingSender, observation_pushes
from ingest.delivery.sender import Sender
from ingest.delivery.store import DeliveryStore
from ingest.delivery.tuning import DeliveryTuning
from ingest.people import PeopleFile
from ingest.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DeliveryParts:
    store: DeliveryStore
    sender: Sender
    plan: ChannelPlan
    problem: str | None  # the channels file could not be used: nothing goes to channels
    pushes: ObservationPushes | None = None  # the pushes' batches of observations (push.py)

    def close(self) -> None:
        self.store.close()
        if self.pushes is not None:
            self.pushes.close()


def load_config(
    settings: Settings, registry: Registry, people: PeopleFile
) -> tuple[ChannelsConfig, str | None]:
    """The channels file (``settings.channels``); a file with problems is an empty one (logged,
    and the problem returned), as a bad people file gives nobody."""
    try:
        return load_channels(settings.channels, people.current(), registry), None
    except ChannelsError as e:
        log.error("no notice goes to a channel: %s", e)
        return ChannelsConfig(), str(e)


def load_plan(
    settings: Settings, registry: Registry, people: PeopleFile
) -> tuple[ChannelPlan, str | None]:
    """The plan of the channels file; a file with problems gives no endpoints."""
    config, problem = load_config(settings, registry, people)
    return plan_of(config, people.current(), registry), problem


def open_delivery(
    settings: Settings,
    registry: Registry,
    url: str,
    seat: Seat | None = None,
    wake_outbox: Callable[[], None] = lambda: None,
    tuning: DeliveryTuning | None = None,
    influx_rows: InfluxRows | None = None,
) -> DeliveryParts:
    """The parts on the database ``url`` (the alert store's). ``seat``: a cluster's worker,
    which delivers only while it leads (one sender for the shared queue, as the outbox has one
    publisher); ``wake_outbox``: an escalation wrote announcements; ``influx_rows``: how the
    pushes read InfluxDB (ingest/api/series.py ``influxql_rows``; without it only alerts are
    pushed)."""
    tune = tuning or DeliveryTuning.of(settings)

    def active() -> bool:
        return seat is None or seat.leader()

    people = PeopleFile(settings.workers, registry)
    config, problem = load_config(settings, registry, people)
    plan = plan_of(config, people.current(), registry)
    store = DeliveryStore(url)
    pushes = observation_pushes(
        config.push,
        registry,
        url,
        influx_rows,
        settings.influx_url,
        settings.influx_database,
        active,
    )
    sender = PushingSender(
        store,
        Expander(lambda: plan, people, registry, config.push),
        lambda: plan,
        backoff=tune.backoff,
        timeout_s=tune.timeout_s,
        concurrency=tune.concurrency,
        tick_s=tune.tick_s,
        active=active,
        wake_outbox=wake_outbox,
        escalate_after_s=tune.escalate_undelivered_after_s,
        dispatching=problem is None,
    )
    if problem is not None:
        log.error("channel jobs are kept, not delivered, until the channels file is fixed")
    sender.attach(pushes)
    return DeliveryParts(store=store, sender=sender, plan=plan, problem=problem, pushes=pushes)
