"""``citysense run`` (what ``make run`` calls): the local stack, the service and the simulator.

The service and the simulator run as child processes, as they would in production, so the
simulator's load never shares the service's event loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from ingest.api.tokens import Role
from ingest.api.tokentable import open_tokens
from ingest.ops import processes, stack
from ingest.settings import Settings

log = logging.getLogger("citysense.run")
DEMO_TOKEN_NAME = "make-run operator"


def _child(*args: str) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only us, and we stop the children in order
    # (the simulator says goodbye first, then the service stores it and drains).
    return subprocess.Popen([sys.executable, "-m", "ingest.cli", *args], start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _demo_token(settings: Settings) -> str:
    """A fresh operator token for this run (the last run's is revoked: only hashes are kept,
    so an old token cannot be shown again)."""
    tokens = open_tokens(stack.with_stack_database(settings))  # where `serve` reads them
    for principal in tokens.list():
        if principal.name == DEMO_TOKEN_NAME:
            tokens.revoke(principal.token_id)
    token, _ = tokens.add(DEMO_TOKEN_NAME, Role.OPERATOR)
    return token


def run_demo(settings: Settings, repo_root: Path, args: argparse.Namespace) -> int:
    """Bring everything up, print where to look, and wait for Ctrl-C."""
    recorded = stack.status(settings)
    already_up = bool(recorded) and all(alive for _, alive in recorded)
    try:
        procs = stack.up(settings, repo_root)
    except processes.StackError as e:
        log.error("cannot start the local stack: %s", e)
        return 1
    for p in procs:
        log.info("%s is at %s (log %s)", p.name, p.address, p.log_path)
    token = _demo_token(settings)
    service = _child("serve")
    # The field stations of the registry report through their gateways (HJ 212, SL 651).
    gateways = [_child("gateway", protocol) for protocol in ("hj212", "sl651")]
    time.sleep(1.0)  # let the service subscribe before the first retained statuses arrive
    simulator = _child(
        "simulate",
        *("--rate", str(args.rate), "--duration", "0", "--scenario", args.scenario),
        *("--protocol", "mqtt,hj212,sl651"),
    )
    api = f"http://{settings.api_host}:{settings.api_port}"

    print(
        "\ncitysense is running: the service logs a status line every "
        f"{settings.status_interval_s:.0f} s.\n"
        f"  see the data:   {stack.operator_query_hint(settings)}\n"
        f"  dead letters:   .venv/bin/citysense deadletters list\n"
        f"  devices:        .venv/bin/citysense devices list\n"
        f"  HTTP API:       {api} (try {api}/docs)\n"
        f"  web pages:      http://{settings.api_host}:{settings.api_port}/ui/\n"
        f"  operator token: {token}\n"
        f"  staged alerts:  the simulator plays {args.scenario.replace(',', ', ')} (--scenario)\n"
        f"  field stations: HJ 212 on port {settings.gateway_hj212_port}, SL 651 on port "
        f"{settings.gateway_sl651_port} (citysense gateway; their readings are stored like any)\n"
        f'  e.g.:           curl -H "Authorization: Bearer {token}" {api}/alerts\n'
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    try:
        while service.poll() is None and simulator.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(simulator, 10)
        for gateway in gateways:  # after the stations, before the service that stores theirs
            _stop(gateway, 10)
        _stop(service, 20)
        if not already_up:
            stack.down(settings)
    code = service.returncode or 0
    return code if code > 0 else 0
