"""The delivery loop: one task of the service (the leader's, in a cluster).

Each round: expand waiting channel jobs into deliveries (``DeliveryStore.dispatch``), give up
on deliveries older than ``max_age`` (``expired``), escalate critical alerts nobody was
reached for, then send what is due — per endpoint no more than its token bucket allows
(the platform's ``rate_per_minute``), at most ``concurrency`` requests at once, each with a
time limit. Every attempt is recorded with the platform's answer (``delivery_attempts``).

At least once: a delivery is marked ``delivered`` only after the platform said so, in the
transaction that records the receipt. A crash (or a failing database) between the answer and
that commit sends it again after the restart: a platform that is ``idempotent`` drops the
repeat by the delivery's key; on the others it is a duplicate, at most one per request that
was in flight (``concurrency``). Database work runs in worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from ingest.channels import Outcome, Platform
from ingest.delivery.backoff import Backoff
from ingest.delivery.database import DELIVERED, EXPIRED, FAILED, PENDING
from ingest.delivery.escalation import escalate_undelivered
from ingest.delivery.notices import notice_of
from ingest.delivery.plan import ChannelPlan
from ingest.delivery.ratelimit import TokenBucket
from ingest.delivery.store import Attempt, DeliveryStore, Due, Expand

log = logging.getLogger(__name__)

MAX_HOLD_S = 600.0  # the longest a Retry-After may hold an endpoint back

EXPIRE_EVERY_S = 10.0
ESCALATE_EVERY_S = 1.0
DISPATCH_ROUNDS = 10  # job batches expanded per round at most (then sending gets its turn)


@dataclass
class Counts:
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    escalated: int = 0


def _ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


class Sender:
    """Sends the deliveries of ``store`` until cancelled (``run``); ``round`` is one pass."""

    def __init__(
        self,
        store: DeliveryStore,
        expand: Expand,
        plan: Callable[[], ChannelPlan],
        *,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
        concurrency: int = 16,
        tick_s: float = 0.2,
        active: Callable[[], bool] = lambda: True,
        wake_outbox: Callable[[], None] = lambda: None,
        escalate_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
        dispatching: bool = True,
    ) -> None:
        self._store = store
        # False while the channels file could not be read: the jobs wait in the queue (an
        # empty plan would expand them into nothing and delete them: lost).
        self._dispatching = dispatching
        self._expand = expand
        self._plan = plan
        self._backoff = backoff or Backoff()
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._tick_s = tick_s
        self._active = active
        self._wake_outbox = wake_outbox
        self._escalate_after_s = escalate_after_s
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, float] = {}  # endpoint → not before (clock s): it said wait
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._busy: dict[str, int] = {}  # endpoint → its requests in flight
        self._http: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._expired_at = 0.0
        self._escalated_at = 0.0
        self.counts = Counts()

    def wake(self) -> None:
        """New jobs are waiting: look now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Deliver until cancelled; requests in flight are cancelled with it (their deliveries
        stay pending and go again: at least once)."""
        async with aiohttp.ClientSession() as http:
            self._http = http
            try:
                while True:
                    if self._active():
                        try:
                            await self.round()
                        except Exception:
                            log.exception("delivery round failed; trying again")
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._tick_s)
            finally:
                for task in list(self._in_flight.values()):
                    task.cancel()
                if self._in_flight:
                    await asyncio.wait(list(self._in_flight.values()))

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) for the requests in flight: an orderly stop records their answers."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=timeout_s)

    async def round(self) -> int:
        """Dispatch, expire, escalate, and start the due sends; how many were started."""
        store, now = self._store, self._clock()
        for _ in range(DISPATCH_ROUNDS if self._dispatching else 0):
            jobs, _made = await asyncio.to_thread(store.dispatch, self._expand, _ms(self._clock))
            if jobs == 0:
                break
        plan = self._plan()
        if now - self._expired_at >= EXPIRE_EVERY_S:
            self._expired_at = now
            max_age_ms = round(self._backoff.max_age_s * 1000)
            self.counts.expired += await asyncio.to_thread(
                store.expire, _ms(self._clock), max_age_ms
            )
        if now - self._escalated_at >= ESCALATE_EVERY_S:
            self._escalated_at = now
            after = self._escalate_after_s or plan.escalate_undelivered_after_s
            done = await asyncio.to_thread(escalate_undelivered, store, _ms(self._clock), after)
            if done:
                self.counts.escalated += len(done)
                self._wake_outbox()
        started = 0
        # One endpoint may hold at most a share of the slots: a platform that hangs (each
        # request waiting out its timeout) must not take every slot from the others.
        share = max(1, self._concurrency // 4)
        for endpoint, config in plan.endpoints.items():
            room = self._concurrency - len(self._in_flight)
            if room <= 0:
                break
            room = min(room, share - self._busy.get(endpoint, 0))
            if room <= 0:
                continue
            if self._held.get(endpoint, 0.0) > now:
                continue
            bucket = self._buckets.get(endpoint)
            if bucket is None:
                bucket = self._buckets[endpoint] = TokenBucket(config.rate_per_minute)
            n = min(room, bucket.available)
            if n <= 0:
                continue
            due = await asyncio.to_thread(
                store.due, endpoint, _ms(self._clock), n, set(self._in_flight)
            )
            for item in due:
                if not bucket.take():
                    break
                platform = plan.platform(endpoint, item.recipient)
                task = asyncio.create_task(self._send(item, platform), name=f"deliver-{item.id}")
                self._in_flight[item.id] = task
                self._busy[endpoint] = self._busy.get(endpoint, 0) + 1
                task.add_done_callback(self._finished(item.id, endpoint))
                started += 1
        return started

    def _finished(self, delivery_id: int, endpoint: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._in_flight.pop(delivery_id, None)
            self._busy[endpoint] = max(0, self._busy.get(endpoint, 0) - 1)

        return done

    async def _send(self, item: Due, platform: Platform | None) -> None:
        started = self._clock()
        at_ms = _ms(self._clock)
        status: int | None = None
        if platform is None:  # no longer configured (or an SMS gateway without their phone)
            gone = Outcome(
                False, False, "no_endpoint", f"{item.endpoint} cannot reach {item.recipient}"
            )
            await self._record(item, gone, None, at_ms, started)
            return
        try:
            request = platform.request(notice_of(item.key, item.notice), at_ms)
            assert self._http is not None, "send only inside run()"
            async with asyncio.timeout(self._timeout_s):
                # No redirects: a 3xx would carry the platform's key (URL, headers, body) to
                # wherever it points; it is read as the platform's answer instead.
                async with self._http.request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    data=request.body,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    outcome = platform.outcome(status, await response.read())
        except TimeoutError:
            outcome = Outcome(False, True, "timeout", f"no answer within {self._timeout_s} s")
        except aiohttp.ClientError as e:
            # The error's text may hold the URL, and robots carry their key in it: the
            # receipt keeps the error's kind only.
            outcome = Outcome(False, True, "connection", type(e).__name__)
        except Exception as e:  # a platform module's bug: this delivery cannot be made
            log.exception("delivery %d to %s could not be made", item.id, item.endpoint)
            outcome = Outcome(False, False, "error", repr(e)[:500])
        await self._record(item, outcome, status, at_ms, started)

    async def _record(
        self, item: Due, outcome: Outcome, status: int | None, at_ms: int, started: float
    ) -> None:
        took_ms = round((self._clock() - started) * 1000)
        next_ms = at_ms
        if outcome.delivered:
            state, result = DELIVERED, DELIVERED
        elif outcome.retry:
            asked = (
                None if outcome.retry_after_s is None else min(outcome.retry_after_s, MAX_HOLD_S)
            )
            wait = self._backoff.delay_s(item.attempts + 1, asked)
            next_ms = at_ms + round(wait * 1000)
            if outcome.retry_after_s:
                held = min(outcome.retry_after_s, MAX_HOLD_S)  # a platform's word, bounded
                self._held[item.endpoint] = self._clock() + held
            if self._backoff.expired(item.created_ms, next_ms):
                state, result = EXPIRED, EXPIRED
            else:
                state, result = PENDING, "retry"
        else:
            state, result = FAILED, FAILED
        receipt = Attempt(at_ms, took_ms, status, outcome.code, outcome.detail, result)
        self.counts.attempts += 1
        try:
            await asyncio.to_thread(self._store.record, item.id, receipt, state, next_ms)
        except Exception:
            # Not marked: it stays pending as it was and is sent again (at least once).
            log.exception("could not record delivery %d's attempt; it will be sent again", item.id)
            return
        if state == DELIVERED:
            self.counts.delivered += 1
        elif state == PENDING:
            self.counts.retried += 1
        elif state == FAILED:
            self.counts.failed += 1
            log.warning(
                "delivery %d to %s failed: %s %s",
                item.id,
                item.endpoint,
                outcome.code,
                outcome.detail,
            )
        else:
            self.counts.expired += 1
