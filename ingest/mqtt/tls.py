"""The TLS context of the service's two broker connections (the consumer and the alert
publisher), from ``CITYSENSE_MQTT_TLS``, ``_CA_FILE``, ``_CERT_FILE`` and ``_KEY_FILE``.

One function for both, so they cannot drift apart: TLS 1.2 or 1.3 (nothing older), the
broker's certificate checked against the CA file (or the system's trust store) and its name
against ``CITYSENSE_MQTT_HOST``, and a client certificate when one is configured.

The files are read once per process and the context kept: ``citysense serve`` builds it before
the event loop starts (a bad path refuses the start), so reconnects never read files on the
loop. Replacing the CA or client certificate therefore takes a restart.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from ingest.settings import Settings


class MqttTlsError(ValueError):
    """The TLS settings cannot be used (a file missing or unreadable, a key without a cert)."""


def mqtt_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The context to wrap the broker connection in, or None for plain TCP."""
    if not settings.mqtt_tls:
        return None
    return _context(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file)


@functools.cache
def _context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    if (cert_file is None) != (key_file is None):
        raise MqttTlsError("CITYSENSE_MQTT_CERT_FILE and CITYSENSE_MQTT_KEY_FILE go together")
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise MqttTlsError(f"cannot load the MQTT TLS files: {e}") from e
    return context
