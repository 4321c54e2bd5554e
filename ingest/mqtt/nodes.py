"""Which broker node to connect to: the configured one, then the others in turn.

A NATS cluster (``CITYSENSE_BROKER=nats``) keeps the service's persistent session in a
replicated stream, so when the node the service is connected to dies, the same client id
on another node resumes it. ``CITYSENSE_MQTT_ALSO`` lists those other nodes; each failed
attempt moves on to the next, round the list, with the caller's backoff in between.
"""

from __future__ import annotations

from ingest.settings import Settings


class BrokerNodes:
    """The broker addresses of ``settings``; ``current`` until ``failed`` moves on."""

    def __init__(self, settings: Settings) -> None:
        self._nodes = [(settings.mqtt_host, settings.mqtt_port)]
        for node in settings.mqtt_also:
            host, _, port = node.rpartition(":")
            self._nodes.append((host, int(port)))
        self._at = 0

    @property
    def current(self) -> tuple[str, int]:
        """The node to connect to now."""
        return self._nodes[self._at]

    def failed(self) -> None:
        """The current node failed (refused, unreachable, lost): the next one is tried next."""
        self._at = (self._at + 1) % len(self._nodes)
