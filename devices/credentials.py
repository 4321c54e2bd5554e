"""MQTT passwords derived from one provisioning secret: devices and grid workers.

A device authenticates to the broker as its own id, with the password
``base64(HMAC-SHA256(dev_secret, device_id))`` (standard base64, RFC 4648 §4: ``+/`` alphabet,
``=`` padding, 44 characters). Grid workers get the same construction over
``"worker:" + username``, so a worker can never share a password with a device of the same
name. Whoever holds the secret can compute every password: the simulator and the tests use
that to connect as any device; in production it is the provisioning key an operator keeps as
they would keep a CA key, and the derived password is what is written into each device.

Production sets ``CITYSENSE_DEV_SECRET`` to a secret of its own (32 random bytes or more, e.g.
``openssl rand -base64 32``). ``LOCAL_EXAMPLE_DEV_SECRET`` is public, in this repository, and
exists only so the local example city (``make run``, the tests) works with no setup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

DEV_SECRET_ENV = "CITYSENSE_DEV_SECRET"

# Public on purpose: only for the local example city on 127.0.0.1. Never for a real broker.
LOCAL_EXAMPLE_DEV_SECRET = "citysense-local-example-city-dev-secret-not-for-production"

# Keeps the worker and device password spaces apart (HMAC input domain separation).
WORKER_PREFIX = "worker:"


def _derive(dev_secret: bytes | str, message: str) -> str:
    key = dev_secret.encode() if isinstance(dev_secret, str) else dev_secret
    if not key:
        raise ValueError("the dev secret is empty")
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def device_password(dev_secret: bytes | str, device_id: str) -> str:
    """``base64(HMAC-SHA256(dev_secret, device_id))``, standard base64; a str secret is UTF-8."""
    return _derive(dev_secret, device_id)


def worker_password(dev_secret: bytes | str, username: str) -> str:
    """``base64(HMAC-SHA256(dev_secret, "worker:" + username))``, standard base64."""
    return _derive(dev_secret, WORKER_PREFIX + username)


# The ingest service's broker user; its local password is public like the dev secret.
INGEST_USER = "citysense-ingest"
# Public on purpose: only for the local example city on 127.0.0.1. Production sets
# CITYSENSE_MQTT_PASSWORD, which both this generator and the ingest service read.
LOCAL_EXAMPLE_INGEST_PASSWORD = "citysense-local-ingest-password-not-for-production"

# Field gateways (ingest/gateway/) publish for the stations of one protocol each; their
# passwords come from the same secret over "gateway:" + protocol, kept apart like workers'.
GATEWAY_PREFIX = "gateway:"


def gateway_user(protocol: str) -> str:
    """The broker user of the gateway for ``protocol`` (``hj212``, ``sl651``)."""
    return f"citysense-gateway-{protocol}"


def gateway_password(dev_secret: bytes | str, protocol: str) -> str:
    """``base64(HMAC-SHA256(dev_secret, "gateway:" + protocol))``, standard base64."""
    return _derive(dev_secret, GATEWAY_PREFIX + protocol)
