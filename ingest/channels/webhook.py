"""A generic signed webhook: other systems and neighbouring cities receive notices as JSON.

The contract (ours; a receiver implements it):

- ``POST url``, ``Content-Type: application/json``, the body the JSON object of every field
  of the notice (``lines`` a list; ``data`` an object, empty but for a push's batch of
  observations: ``subject`` ``push``, ``event`` ``observations``), UTF-8.
- ``X-Citysense-Timestamp``: milliseconds since the epoch when it was signed;
  ``X-Citysense-Signature``: lowercase hex ``HMAC-SHA256(secret, f"{timestamp}.{body}")``
  (the body's exact bytes); ``X-Citysense-Idempotency-Key``: the notice's key, the same on
  every retry. A receiver checks the signature, refuses a timestamp more than 5 minutes
  from its clock (a replay), and drops a key it has seen (so a retry is never a second
  notice: ``idempotent`` is true).
- 2xx: delivered (the body is not read). 5xx, 429, 408: retried (a ``Retry-After`` header is
  honoured by the delivery loop). Any other status: failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.channels import Notice, Outcome, Request
from ingest.channels.common import Secret, detail, http_outcome, json_body

TIMESTAMP = "X-Citysense-Timestamp"
SIGNATURE = "X-Citysense-Signature"
IDEMPOTENCY_KEY = "X-Citysense-Idempotency-Key"
REPLAY_WINDOW_MS = 5 * 60_000


def signature(secret: str, timestamp_ms: int, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``f"{timestamp}.{body}"``."""
    message = f"{timestamp_ms}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookConfig(BaseModel):
    """One signed webhook receiver in config/channels.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: Secret
    rate_per_minute: int = Field(600, ge=1)


class Webhook:
    """A signed webhook receiver."""

    type = "webhook"
    idempotent = True

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.rate_per_minute = config.rate_per_minute

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The notice as signed JSON."""
        fields = dataclasses.asdict(notice)
        fields["lines"] = list(notice.lines)
        fields["data"] = dict(notice.data)
        body = json_body(fields)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP: str(now_ms),
            SIGNATURE: signature(self.config.secret.get_secret_value(), now_ms, body),
            IDEMPOTENCY_KEY: notice.key,
        }
        return Request("POST", self.config.url, headers, body)

    def outcome(self, status: int, body: bytes) -> Outcome:
        """2xx: delivered; 5xx/429/408: retry; others: failed."""
        by_status = http_outcome(status, body)
        if by_status is not None:
            return by_status
        return Outcome(True, False, str(status), detail(body.decode("utf-8", "replace")))
