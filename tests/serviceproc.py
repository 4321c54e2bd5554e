"""``citysense serve`` as a subprocess: its environment, its start, its memory.

Shared by the fault tests (tests/integration/faults.py) and ``make bench``
(benchmarks/rig.py), which both run the real service as a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[1]
REGISTRY_FILE = REPO / "config" / "registry.yaml"
RULES_FILE = REPO / "config" / "rules.yaml"
PYTHON = REPO / ".venv" / "bin" / "python"
HOST = "127.0.0.1"


def service_env(
    *, mqtt_port: int, client_id: str, influx_url: str, database: str, data_dir: Path
) -> dict[str, str]:
    """This process's environment without its CITYSENSE_* variables, plus the service's own:
    the example city and rules, InfluxDB 1.x, and no device judged silent while the caller
    runs (silence is under test in neither the fault tests nor the benchmark)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSENSE_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "CITYSENSE_MQTT_HOST": HOST,
            "CITYSENSE_MQTT_PORT": str(mqtt_port),
            "CITYSENSE_MQTT_CLIENT_ID": client_id,
            "CITYSENSE_INFLUX_URL": influx_url,
            "CITYSENSE_INFLUX_DIALECT": "v1",
            "CITYSENSE_INFLUX_DATABASE": database,
            "CITYSENSE_REGISTRY": str(REGISTRY_FILE),
            "CITYSENSE_RULES": str(RULES_FILE),
            "CITYSENSE_DATA_DIR": str(data_dir),
            "CITYSENSE_ALERT_START_GRACE_S": "86400",
        }
    )
    return env


def spawn_service(env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start ``python -m ingest.cli serve`` in its own session, output to ``log``."""
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    return subprocess.Popen(
        [python, "-m", "ingest.cli", "serve"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in kB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    if "VmRSS" not in values:
        return None  # a zombie has no memory lines
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])
