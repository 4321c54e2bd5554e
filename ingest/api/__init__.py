"""The HTTP API (docs/security.md): FastAPI routes over the running service's parts."""

from ingest.api.app import create_app
from ingest.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
