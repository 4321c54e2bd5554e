"""The delivery loop's knobs, from ``CITYSENSE_DELIVERY_*`` environment variables.

Kept apart from ``ingest/settings.py`` while the channels' settings (``channels``) are being
added there; to fold into the one settings model once that lands.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.delivery.backoff import Backoff


class DeliveryTuning(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYSENSE_DELIVERY_", extra="ignore")

    backoff_base_s: float = Field(2.0, gt=0, description="first retry after ~this (doubling)")
    backoff_max_s: float = Field(300.0, gt=0, description="retries at most this far apart")
    max_age_s: float = Field(24 * 3600.0, gt=0, description="undelivered this long: expired")
    timeout_s: float = Field(10.0, gt=0, description="one request's time limit")
    concurrency: int = Field(16, ge=1, description="requests in flight at once, all endpoints")
    tick_s: float = Field(0.2, gt=0, description="look for due deliveries this often")
    escalate_undelivered_after_s: float | None = Field(
        None, gt=0, description="overrides the channels' config (tests)"
    )

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base_s, self.backoff_max_s, self.max_age_s)
