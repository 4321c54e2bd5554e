"""The start-up check of ``CITYSENSE_ENVIRONMENT=production``: no public secrets.

The repository publishes a dev secret, an ingest password and a plate key so the example city
runs with no setup. Whoever knows them can compute every device and worker password or reverse
every plate hash, so a production ``serve``, ``stack up`` or ``broker-config`` must refuse to
start with any of them, or with an empty one, and name each variable to set.
"""

from __future__ import annotations

from devices.credentials import LOCAL_EXAMPLE_DEV_SECRET, LOCAL_EXAMPLE_INGEST_PASSWORD
from ingest.settings import Settings

# Every value this repository has shipped as an example; each is public.
PUBLIC_VALUES: dict[str, frozenset[str]] = {
    "CITYSENSE_DEV_SECRET": frozenset({LOCAL_EXAMPLE_DEV_SECRET}),
    "CITYSENSE_MQTT_PASSWORD": frozenset({LOCAL_EXAMPLE_INGEST_PASSWORD}),
    "CITYSENSE_PLATE_KEY": frozenset({"citysense-dev-plate-key"}),
}


class PublicSecretError(RuntimeError):
    """Production settings still hold an unset, empty or public secret."""


def public_secrets(settings: Settings) -> list[str]:
    """The secret variables whose value is empty or public (in the order of ``PUBLIC_VALUES``)."""
    values = {
        "CITYSENSE_DEV_SECRET": settings.dev_secret.get_secret_value(),
        "CITYSENSE_MQTT_PASSWORD": settings.mqtt_password.get_secret_value(),
        "CITYSENSE_PLATE_KEY": settings.plate_key.get_secret_value(),
    }
    # An unset variable takes the public default, so "unset" is caught as "public".
    return [
        name
        for name, public in PUBLIC_VALUES.items()
        if not values[name].strip() or values[name] in public
    ]


def check_production(settings: Settings) -> None:
    """Raise ``PublicSecretError`` naming each bad secret, in production; nothing in local."""
    if settings.environment != "production":
        return
    bad = public_secrets(settings)
    if bad:
        raise PublicSecretError(
            "CITYSENSE_ENVIRONMENT=production refuses to start: "
            + ", ".join(bad)
            + " is unset, empty or a public example value; set each to a secret of your own "
            "(e.g. `openssl rand -base64 32`)"
        )
