"""The delivery loop's knobs: from the settings model (``CITYSENSE_DELIVERY_*``), and the
test-only ones (tick, an escalation time overriding the channels file's)."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.delivery.backoff import Backoff
from ingest.settings import Settings


@dataclass(frozen=True, slots=True)
class DeliveryTuning:
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    max_age_s: float = 24 * 3600.0
    timeout_s: float = 10.0
    concurrency: int = 16
    tick_s: float = 0.2  # look for due deliveries this often
    escalate_undelivered_after_s: float | None = None  # overrides the channels file (tests)

    @classmethod
    def of(cls, settings: Settings) -> DeliveryTuning:
        """The settings' delivery fields."""
        return cls(
            backoff_base_s=settings.delivery_backoff_base_s,
            backoff_max_s=settings.delivery_backoff_max_s,
            max_age_s=settings.delivery_max_age_s,
            timeout_s=settings.delivery_timeout_s,
            concurrency=settings.delivery_concurrency,
        )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_max_s, self.max_age_s)
