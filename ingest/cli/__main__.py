"""``python -m ingest.cli``: the ``citysense`` command."""

import sys

from ingest.cli import main

sys.exit(main())
