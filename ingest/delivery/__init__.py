"""Delivering alerts and cases to people's channels (issue 19): 企业微信, 钉钉, 飞书, SMS, webhooks.

The alert store writes one ``channel_jobs`` row per announcement in the change's own
transaction (``ingest/alerts/database.py``), so a crash after the commit loses nothing. From
there, one task of the service (the leader's, in a cluster):

- ``dispatch.py`` expands a job into ``deliveries`` — one per (message, recipient, endpoint),
  recipients from the announcement's audience key (the people holding that post, and a
  department unit's own endpoints), filtered by the severity's channel types and the quiet
  hours (``plan.py``) — and deletes the job, in one transaction (``store.py``);
- ``sender.py`` sends each due delivery through its platform (``ingest/channels/``), at most
  the platform's rate per endpoint (``ratelimit.py``), retrying with backoff and jitter
  (``backoff.py``), recording every attempt as a receipt (``delivery_attempts``), and marks it
  delivered only once the platform said so (at least once);
- ``escalation.py`` flags a critical alert nobody was reached for within
  ``escalate_undelivered_after``, records it on the alert and tells the operators.

The tables are in ``database.py``; ``GET /deliveries`` (ingest/api/deliveries.py) reads them.
"""
