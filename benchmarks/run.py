"""`make bench`: citysense against the physical limit, on this machine, in one run.

1. reference: K QoS 1 messages queued by the broker for a persistent session, drained by a
   plain paho client whose callback only counts (messages/s, connect → K-th message);
2. citysense: the same K queued for the service's session, then ``citysense serve`` started;
   messages/s from process start until all K points are counted in InfluxDB, and the ratio;
3. alert latency: a steady publish rate with a known fraction of alert-raising messages; a
   monitor on ``alerts/#`` records arrival minus publish time (p50, p95, p99, max);
4. memory: the service's peak RSS (VmHWM) in (2), in (3), and in (2) with InfluxDB stopped for
   30 s in the middle (the spool) — that run also checks nothing is lost once it is back.

(1) and (2) are repeated (``--repeat``) and their medians reported; (3) and the outage run
once each. Prints a table and writes ``bench-results.json``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.rig import (
    GATEWAY,
    INGEST,
    MONITOR,
    PYTHON,
    BenchError,
    Service,
    Stack,
    connect,
    drain_reference,
    forget_session,
    new_client,
    queue_messages,
    stored_count,
    subscribe_session,
)
from benchmarks.workload import TRIGGER_RULE, Message, Workload
from tests.serviceproc import REPO

POLL_S = 0.1
STALL_S = 60.0  # no new point for this long: the run has failed


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


# --- (2) and (4): the backlog through citysense -------------------------------------------------


@dataclass
class IngestRun:
    k: int
    seconds: float  # process start → K-th point counted
    connected_s: float  # process start → "connected" (interpreter, imports, stores, connect)
    stored: int
    peak_rss_mb: float
    outage_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.k / self.seconds

    @property
    def rate_after_connect(self) -> float:
        return self.k / (self.seconds - self.connected_s)


def wait_stored(
    stack: Stack,
    service: Service,
    k: int,
    influx_outage: tuple[float, float] | None = None,
) -> tuple[float, int, float]:
    """Poll InfluxDB until ``k`` points are counted; return (seconds since the service's start,
    the count, seconds InfluxDB was down). ``influx_outage`` = (fraction of ``k`` stored at
    which InfluxDB is stopped, seconds it stays down)."""
    last, last_change = -1, time.monotonic()
    outage_done = influx_outage is None
    down_s = 0.0
    while True:
        count = stored_count(stack.influx_url, service.database)
        now = time.monotonic()
        if count is not None and count >= k:
            return now - service.started_at, count, down_s
        if count is not None and count != last:
            last, last_change = count, now
        if not outage_done and influx_outage is not None and (count or 0) >= influx_outage[0] * k:
            say(f"  {count} of {k} stored: stopping InfluxDB for {influx_outage[1]:g} s")
            went_down = time.monotonic()
            stack.stop_influxdb()
            while time.monotonic() - went_down < influx_outage[1]:
                service.check_alive()
                time.sleep(0.5)
            stack.start_influxdb(service.database)
            down_s = time.monotonic() - went_down
            say("  InfluxDB is back")
            outage_done = True
            last_change = time.monotonic()
            continue
        service.check_alive()
        if now - last_change > STALL_S:
            raise BenchError(
                f"stalled at {last} of {k} points for {STALL_S:g} s:\n{service.tail()}"
            )
        time.sleep(POLL_S)


def ingest_run(
    stack: Stack,
    root: Path,
    name: str,
    messages: list[Message],
    outage: tuple[float, float] | None = None,
) -> IngestRun:
    """(2): queue ``messages`` for a fresh service session, start the service, time it."""
    service = Service(stack, root, name)
    try:
        # First run: creates the session (and its subscription), the data directory and the
        # alert store; the SIGTERM leaves the session with the broker, which queues for it.
        service.start()
        service.wait_subscribed()
        service.stop()
        queue_s = queue_messages(stack.mqtt_port, messages)
        say(f"  {name}: queued {len(messages)} in {queue_s:.1f} s; starting the service")
        service.start()
        seconds, stored, down_s = wait_stored(stack, service, len(messages), outage)
        connected_s = service.connected_after()
        if outage is not None and down_s == 0:
            raise BenchError("all points were stored before InfluxDB could be stopped")
        service.check_alive()
        code = service.stop()
        notes = [] if code == 0 else [f"exit code {code} after SIGTERM"]
        # Anything beyond K would be a point not sent; below K is impossible here (we waited).
        final = stored_count(stack.influx_url, service.database) or stored
        return IngestRun(
            k=len(messages),
            seconds=seconds,
            connected_s=connected_s,
            stored=final,
            peak_rss_mb=service.peak_rss_kb / 1024,
            outage_s=down_s,
            notes=notes,
        )
    finally:
        service.stop()
        service.forget_session()
        stack.drop_database(service.database)


# --- (1): the reference ------------------------------------------------------------------------


def reference_run(stack: Stack, messages: list[Message], rep: int) -> float:
    client_id = f"bench-reference-{rep}"
    subscribe_session(stack.mqtt_port, client_id, INGEST)
    try:
        queue_s = queue_messages(stack.mqtt_port, messages)
        say(f"  reference #{rep}: queued {len(messages)} in {queue_s:.1f} s; draining")
        return drain_reference(stack.mqtt_port, client_id, len(messages))
    finally:
        forget_session(stack.mqtt_port, client_id, INGEST)


# --- (3): alert latency --------------------------------------------------------------------------


@dataclass
class LatencyRun:
    rate: float  # achieved publish rate
    published: int
    triggers: int
    matched: int
    latencies_ms: list[float]
    stored: int
    peak_rss_mb: float
    samples: list[tuple[float, float]]  # (s since the first trigger, latency ms), in order

    def figure(self, p: float) -> float | None:
        return percentile(self.latencies_ms, p) if self.latencies_ms else None


def publish_steady(
    port: int, workload: Workload, rate: float, duration_s: float
) -> tuple[list[Message], dict[tuple[str, int], float], float]:
    """Publish at ``rate`` for ``duration_s`` (device time = wall clock); return the messages,
    the publish time (wall clock, just before paho took it) of each triggering one by (device,
    ts), and the achieved rate."""
    client = new_client(f"bench-steady-{os.getpid()}", GATEWAY, clean_session=True)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connect(client, port)
    sent: list[Message] = []
    published_at: dict[tuple[str, int], float] = {}
    total = round(rate * duration_s)
    started = time.monotonic()
    try:
        while len(sent) < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while len(sent) < due:
                m = workload.next(now_ms())
                if m.trigger:
                    published_at[(m.device, m.ts)] = time.time()
                client.publish(m.topic, m.payload, qos=1)
                sent.append(m)
            time.sleep(0.001)
        achieved = len(sent) / (time.monotonic() - started)
    finally:
        time.sleep(1.0)  # let the last PUBACKs come; the stored count is checked anyway
        client.disconnect()
        client.loop_stop()
    return sent, published_at, achieved


def latency_run(
    stack: Stack, root: Path, rate: float, duration_s: float, fraction: float
) -> LatencyRun:
    service = Service(stack, root, "latency", CITYSENSE_ALERT_RENOTIFY_S="0")
    out = root / "latency" / "alerts.jsonl"
    monitor: subprocess.Popen[str] | None = None
    try:
        service.start()
        service.wait_subscribed()
        monitor = subprocess.Popen(
            [
                str(PYTHON),
                "-m",
                "benchmarks.monitor",
                str(stack.mqtt_port),
                MONITOR.username,
                str(out),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert monitor.stdin is not None and monitor.stdout is not None
        monitor.stdin.write(MONITOR.password + "\n")
        monitor.stdin.flush()
        if monitor.stdout.readline().strip() != "ready":
            raise BenchError("the alert monitor did not start")
        workload = Workload(fraction, seed=11)
        sent, published_at, achieved = publish_steady(stack.mqtt_port, workload, rate, duration_s)
        say(f"  published {len(sent)} at {achieved:.0f} msg/s ({len(published_at)} triggers)")
        service.started_at = time.monotonic()  # wait_stored measures from here; not used
        _, stored, _ = wait_stored(stack, service, len(sent))
        time.sleep(2.0)  # alerts of the last messages
        service.check_alive()
        service.stop()
        monitor.terminate()
        monitor.wait(30)
        arrived: dict[tuple[str, int], float] = {}
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if row["rule"] == TRIGGER_RULE:
                arrived.setdefault((row["device"], int(row["at_ms"])), float(row["received"]))
        first = min(published_at.values(), default=0.0)
        samples = sorted(
            (t - first, (arrived[key] - t) * 1000)
            for key, t in published_at.items()
            if key in arrived
        )
        return LatencyRun(
            rate=achieved,
            published=len(sent),
            triggers=len(published_at),
            matched=len(samples),
            latencies_ms=[ms for _, ms in samples],
            samples=samples,
            stored=stored,
            peak_rss_mb=service.peak_rss_kb / 1024,
        )
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
        service.stop()
        service.forget_session()
        stack.drop_database(service.database)


# --- the report ----------------------------------------------------------------------------------


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as e:
        return f"unknown ({e})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine() -> dict[str, Any]:
    commit = version_of(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        ),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": version_of(["mosquitto", "-h"]),
        "influxd": version_of(["influxd", "version"]),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "aiomqtt": importlib.metadata.version("aiomqtt"),
        "citysense_commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


def mb(value: float) -> str:
    return f"{value:.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=100_000, help="messages in the backlog")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of (1) and (2)")
    parser.add_argument("--rate", type=float, default=2000.0, help="msg/s in the latency run")
    parser.add_argument("--duration", type=float, default=20.0, help="s of the latency run")
    parser.add_argument(
        "--alert-fraction", type=float, default=0.01, help="alert-raising share, latency run"
    )
    parser.add_argument(
        "--backlog-alert-fraction",
        type=float,
        default=0.001,
        help="alert-raising share of the backlog messages of (1), (2) and the outage run",
    )
    parser.add_argument("--outage", type=float, default=30.0, help="s InfluxDB is down (0: skip)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="citysense-bench-"))
    stack = Stack(root / "stack")
    try:
        say(f"starting Mosquitto and InfluxDB under {root}")
        stack.start()
        messages = Workload(args.backlog_alert_fraction).backlog(args.k, now_ms() - 60_000)
        refs: list[float] = []
        runs: list[IngestRun] = []
        for rep in range(1, args.repeat + 1):
            say(f"(1) reference #{rep}")
            refs.append(reference_run(stack, messages, rep))
            say(f"  {refs[-1]:,.0f} msg/s")
            say(f"(2) citysense #{rep}")
            run = ingest_run(stack, root, f"ingest-{rep}", messages)
            runs.append(run)
            say(
                f"  {run.rate:,.0f} msg/s from process start ({run.seconds:.2f} s, connected "
                f"after {run.connected_s:.2f} s); stored {run.stored} of {run.k}; "
                f"peak RSS {mb(run.peak_rss_mb)}"
            )
        say(f"(3) alert latency at {args.rate:g} msg/s for {args.duration:g} s")
        lat = latency_run(stack, root, args.rate, args.duration, args.alert_fraction)
        outage: IngestRun | None = None
        if args.outage > 0:
            say(f"(4) citysense with InfluxDB stopped {args.outage:g} s in the middle")
            outage = ingest_run(stack, root, "outage", messages, outage=(0.5, args.outage))
            say(f"  stored {outage.stored} of {outage.k}; peak RSS {mb(outage.peak_rss_mb)}")
    finally:
        stack.close()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    elapsed = time.monotonic() - began

    ref = statistics.median(refs)
    e2e = statistics.median(r.rate for r in runs)
    e2e_sub = statistics.median(r.rate_after_connect for r in runs)
    rss_steady = max(statistics.median(r.peak_rss_mb for r in runs), lat.peak_rss_mb)
    lost = [r.k - r.stored for r in runs] + ([outage.k - outage.stored] if outage else [])
    lost.append(lat.published - lat.stored)
    p99 = lat.figure(99)
    results: dict[str, Any] = {
        "machine": machine(),
        "k": args.k,
        "repeat": args.repeat,
        "reference_msgs_per_s": {"median": ref, "runs": refs},
        "citysense_msgs_per_s": {
            "median": e2e,
            "runs": [r.rate for r in runs],
            "ratio_to_reference": e2e / ref,
            "seconds": [r.seconds for r in runs],
            "start_to_connected_s": [r.connected_s for r in runs],
            "median_after_connected": e2e_sub,
            "ratio_after_connected": e2e_sub / ref,
            "stored": [r.stored for r in runs],
        },
        "alert_latency_ms": {
            "rate_target": args.rate,
            "rate_achieved": lat.rate,
            "duration_s": args.duration,
            "published": lat.published,
            "stored": lat.stored,
            "alert_fraction": args.alert_fraction,
            "triggers": lat.triggers,
            "alerts_matched": lat.matched,
            "p50": lat.figure(50),
            "p95": lat.figure(95),
            "p99": p99,
            "max": max(lat.latencies_ms) if lat.latencies_ms else None,
            "samples_s_ms": [[round(t, 3), round(ms, 2)] for t, ms in lat.samples],
        },
        "peak_rss_mb": {
            "backlog_median": statistics.median(r.peak_rss_mb for r in runs),
            "backlog_runs": [r.peak_rss_mb for r in runs],
            "latency_run": lat.peak_rss_mb,
            "influx_outage": outage.peak_rss_mb if outage else None,
        },
        "influx_outage": None
        if outage is None
        else {
            "down_s": outage.outage_s,
            "k": outage.k,
            "stored": outage.stored,
            "seconds": outage.seconds,
        },
        "lost_messages": sum(max(0, x) for x in lost),
        "runtime_s": elapsed,
    }
    results["targets"] = {
        "end_to_end_ratio_ge_0.5": e2e / ref >= 0.5,
        "alert_p99_le_50ms": p99 is not None and p99 <= 50 and lat.matched == lat.triggers,
        "rss_steady_le_150mb": rss_steady <= 150,
        "rss_outage_le_250mb": outage is not None and outage.peak_rss_mb <= 250,
        "nothing_lost": results["lost_messages"] == 0,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    def fmt(v: float | None, unit: str = "ms") -> str:
        return "n/a" if v is None else f"{v:.1f} {unit}"

    t = results["targets"]
    rows = [
        ("(1) reference: paho drains K", f"{ref:,.0f} msg/s", ""),
        (
            "(2) citysense end to end",
            f"{e2e:,.0f} msg/s  ({e2e / ref:.2f} x)",
            f"target >= 0.5 x: {'met' if t['end_to_end_ratio_ge_0.5'] else 'NOT met'}",
        ),
        ("    same, from MQTT connect", f"{e2e_sub:,.0f} msg/s  ({e2e_sub / ref:.2f} x)", ""),
        (
            f"(3) alert latency p50/p95/p99/max at {lat.rate:,.0f} msg/s",
            " / ".join(fmt(lat.figure(p)) for p in (50, 95, 99))
            + f" / {fmt(max(lat.latencies_ms) if lat.latencies_ms else None)}",
            f"{lat.matched}/{lat.triggers} alerts; p99 <= 50 ms: "
            + ("met" if t["alert_p99_le_50ms"] else "NOT met"),
        ),
        (
            "(4) peak RSS: backlog / latency run",
            f"{mb(results['peak_rss_mb']['backlog_median'])} / {mb(lat.peak_rss_mb)}",
            f"<= 150 MB: {'met' if t['rss_steady_le_150mb'] else 'NOT met'}",
        ),
        (
            "    peak RSS, InfluxDB down 30 s",
            mb(outage.peak_rss_mb) if outage else "skipped",
            f"<= 250 MB: {'met' if t['rss_outage_le_250mb'] else 'NOT met'}",
        ),
        (
            "lost messages (all runs)",
            str(results["lost_messages"]),
            "met" if t["nothing_lost"] else "NOT met",
        ),
    ]
    print()
    print(f"citysense benchmark: K={args.k:,}, {args.repeat} repetitions, {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    for label, value, verdict in rows:
        print(f"  {label:<{width}}  {value:<34} {verdict}")
    print(f"  wrote {args.out}; {elapsed:.0f} s in all")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
