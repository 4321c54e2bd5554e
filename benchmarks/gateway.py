"""`make bench-gateway`: frames per second one field gateway process parses, publishes, answers.

For each protocol (HJ 212, SL 651) and each station count N: a real Mosquitto (the repository's
``mosquitto.conf``, users and ACL from the generator of ``citysense broker-config``, via
``tests/brokerauth.py``) for a synthetic registry — the example city plus N-max stations of
each protocol, written into the temporary directory — and ``python -m ingest.cli gateway
PROTOCOL --port 0`` as a process of its own, logging in as its own broker account with its
ACL of its stations' topics. No citysense service runs: the broker's PUBACK is what the
gateway waits for before it answers. The load comes from another process
(``benchmarks/gatewayload.py``): N connections, one station each, sending frames back to back
(send, wait for the answer, send the next) for ``--duration`` seconds after a warm-up.

Per run: frames/s answered in the window, answer latency p50/p99/max (send → answer, at the
station), the gateway's CPU % (of one core) and RSS, the broker's and the load generator's
CPU %, unanswered frames (must be 0). Beside them, measured in the same run on the same
machine, the parse-only rate (``devices.hj212.parse`` / ``devices.sl651.parse`` in a loop, one
process) and the gateway's pure path (split, parse, translate, answer; no I/O), so the figure
can be read against the machine. Prints a table, writes ``bench-gateway-results.json``.
``--profile`` runs each protocol's gateway under cProfile instead and prints its top costs.

Why one module (about 490 lines): one run's set-up (registry, broker, gateway process), its
reference and its report belong together; the stations are ``benchmarks/gatewayload.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.gatewayload import hj212_frames, sl651_frames
from benchmarks.rig import MOSQUITTO_CONF, BenchError
from benchmarks.run import machine, percentile
from devices import hj212, sl651
from devices.registry import load_registry
from ingest.gateway.dialects import PROTOCOLS, dialect
from ingest.gateway.translate import HJ212_IGNORED
from ingest.ops.processes import ManagedProcess, free_port, start_mosquitto
from tests import brokerauth
from tests.serviceproc import PYTHON, REGISTRY_FILE, REPO, service_env

STATIONS = (200, 1000)
DURATION_S = 20.0
WARMUP_S = 2.0
REFERENCE_S = 2.0  # per protocol and loop of the parse-only reference
START_TIMEOUT_S = 60.0


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- the synthetic registry ----------------------------------------------------------------------


def identity(protocol: str, i: int) -> tuple[str, str]:
    """Station ``i``'s identity and password: an MN and PW, or a station address and password;
    none is the example city's (its MNs start 4305, its addresses 0043)."""
    if protocol == "hj212":
        return f"9900{i:010d}", f"{i % 1_000_000:06d}"
    return f"99{i:08d}", f"{i % 0xFFFF + 1:04X}"


def write_registry(path: Path, per_protocol: int) -> dict[str, list[tuple[str, str]]]:
    """The example city's registry file plus ``per_protocol`` stations of each protocol, each a
    copy of the city's first station of that protocol with its own id, identity and password
    (no river segment: they are not on a river the registry draws). Returns each protocol's
    (identity, password) list."""
    data = yaml.safe_load(REGISTRY_FILE.read_text(encoding="utf-8"))
    stations: dict[str, list[tuple[str, str]]] = {}
    for protocol in PROTOCOLS:
        template = next(d for d in data["devices"] if d.get("protocol") == protocol)
        key = "mn" if protocol == "hj212" else "station_address"
        for i in range(1, per_protocol + 1):
            ident, password = identity(protocol, i)
            device = {k: v for k, v in template.items() if k not in ("segment", "km")}
            device.update(
                {
                    "id": f"river-bench-{protocol}-{i:05d}",
                    "name": f"基准站 {protocol} {i}",
                    "name_en": f"benchmark station {protocol} {i}",
                    key: ident,
                    "password": password,
                }
            )
            data["devices"].append(device)
            stations.setdefault(protocol, []).append((ident, password))
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return stations


# --- the reference: parsing alone, and the gateway's pure path -----------------------------------


def example_frames(protocol: str) -> list[bytes]:
    """The frames the load generator sends, for one station of each protocol."""
    start = datetime.now(UTC).replace(microsecond=0)
    if protocol == "hj212":
        return [f for f, _ in hj212_frames(*identity("hj212", 1), start)]
    return [f for f, _ in sl651_frames(*identity("sl651", 1), start)]


def rate(work: Any, items: list[bytes], seconds: float) -> float:
    """Calls of ``work(item)`` per second over about ``seconds``, the items in turn."""
    done, began = 0, time.perf_counter()
    deadline = began + seconds
    while True:
        for item in items:
            work(item)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - began)


def reference(protocol: str, registry_path: Path, seconds: float) -> dict[str, float]:
    """Frames/s of the protocol's ``parse`` alone, and of the gateway's whole pure path for a
    frame (a fresh splitter per frame: split, parse, look up the station, check the password,
    build the payload and the answer), in this process."""
    frames = example_frames(protocol)
    if protocol == "hj212":
        skip = frozenset(HJ212_IGNORED)  # as the gateway reads (ingest/gateway/dialects.py)
        ok = [hj212.parse(f, ignore=skip) for f in frames]
        assert all(isinstance(x, hj212.Hj212Frame) for x in ok), ok
        parse_rate = rate(lambda f: hj212.parse(f, ignore=skip), frames, seconds)
    else:
        ok2 = [sl651.parse(f) for f in frames]
        assert all(isinstance(x, sl651.Sl651Frame) for x in ok2), ok2
        parse_rate = rate(sl651.parse, frames, seconds)
    speaks = dialect(protocol, load_registry(registry_path), None)
    now = datetime.now(UTC)

    def pure(frame: bytes) -> None:
        for item in speaks.splitter().feed(frame):
            outcome = speaks.read(item, now)
            assert getattr(outcome, "answer", None), outcome

    return {"parse": parse_rate, "pure_path": rate(pure, frames, seconds)}


# --- the gateway process -------------------------------------------------------------------------

# Its status line: "gateway hj212: broker up, answered=… frames=…" ("stopped, …" at the end).
_STATUS = re.compile(r"gateway (\w+): ([\w ]+), (\w+=\d+(?: \w+=\d+)*)$")


class GatewayProcess:
    """``python -m ingest.cli gateway PROTOCOL --port 0`` (optionally under cProfile)."""

    def __init__(self, protocol: str, env: dict[str, str], log: Path, profile: Path | None):
        self.protocol, self.env, self.log = protocol, env, log
        argv = [str(PYTHON)]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "ingest.cli", "gateway", protocol, "--port", "0"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.search(r"listening on port (\d+)", text)
            if found and "connected to the broker" in text:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"the {self.protocol} gateway did not start:\n{self.tail()}")

    def stop(self) -> dict[str, int]:
        """SIGTERM (its orderly stop); return the counts of its last status line."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            found = _STATUS.search(line)
            if found:
                pairs = (p.split("=", 1) for p in found.group(3).split())
                counts = {k: int(v) for k, v in pairs}
        return counts

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- {self.log} ends:\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Setup:
    root: Path
    registry: Path
    stations: dict[str, list[tuple[str, str]]]
    broker: ManagedProcess


def gateway_env(setup: Setup, name: str) -> dict[str, str]:
    env = service_env(
        mqtt_port=setup.broker.port,
        client_id="unused-by-the-gateway",
        influx_url="http://127.0.0.1:9",  # the gateway never writes to InfluxDB
        database="unused",
        data_dir=setup.root / name / "data",
    )
    env["CITYSENSE_REGISTRY"] = str(setup.registry)
    env["CITYSENSE_CONFIG"] = ""  # no developer's ./citysense.toml
    return env


def load_run(
    setup: Setup,
    protocol: str,
    stations: int,
    duration_s: float,
    warmup_s: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One gateway process, ``stations`` connections for warm-up + ``duration_s``."""
    name = f"{protocol}-{stations}" + ("-profiled" if profile else "")
    (setup.root / name).mkdir(parents=True, exist_ok=True)
    gateway = GatewayProcess(
        protocol, gateway_env(setup, name), setup.root / name / "gateway.log", profile
    )
    counts: dict[str, int] = {}
    try:
        job = {
            "protocol": protocol,
            "port": gateway.port,
            "stations": setup.stations[protocol][:stations],
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "gateway_pid": gateway.proc.pid,
            "broker_pids": [setup.broker.pid],
        }
        done = subprocess.run(
            [str(PYTHON), "-m", "benchmarks.gatewayload"],
            cwd=REPO,
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=warmup_s + duration_s + 120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"the load generator failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
    finally:
        counts = gateway.stop()
    latencies = result.pop("latencies_ms")
    result["latency_ms"] = {
        "frames": len(latencies),
        **{f"p{p}": (percentile(latencies, p) if latencies else None) for p in (50, 90, 99)},
        "max": max(latencies) if latencies else None,
    }
    answered = result["answered_in_window"]
    cpu_s = result["gateway_cpu_pct"] / 100 * result["window_s"]
    result["gateway_cpu_us_per_frame"] = cpu_s / answered * 1e6 if answered else None
    result["gateway_counts"] = counts  # its own status line: frames, answered, unanswered …
    return result


# --- the report ----------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    ref = results["reference_frames_per_s"]
    head = (
        f"{'protocol':8} {'stations':>8} {'frames/s':>9} {'÷ parse':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gw CPU':>7} {'µs/frame':>8} {'gw RSS':>8} {'broker':>7} {'load':>6} "
        f"{'other':>6} {'unanswered':>10}"
    )
    lines = [head]
    for r in results["runs"]:
        lat = r["latency_ms"]
        lines.append(
            f"{r['protocol']:8} {r['stations']:8} {r['frames_per_s']:9,.0f} "
            f"{r['ratio_to_parse_only']:7.2f} "
            f"{lat['p50'] or 0:7.1f} {lat['p99'] or 0:7.1f} {r['gateway_cpu_pct']:6.0f}% "
            f"{r['gateway_cpu_us_per_frame'] or 0:8.0f} "
            f"{r['gateway_peak_rss_mb']:5.0f} MB {r['broker_cpu_pct']:6.0f}% "
            f"{r['load_cpu_pct']:5.0f}% {r['other_cpu_pct']:5.0f}% {r['unanswered']:10}"
        )
    lines.append("reference, one process, frames/s:")
    for protocol, figures in ref.items():
        lines.append(
            f"  {protocol}: parse alone {figures['parse']:,.0f} "
            f"({1e6 / figures['parse']:.0f} µs); "
            f"split + parse + translate + answer (the gateway's pure path) "
            f"{figures['pure_path']:,.0f} ({1e6 / figures['pure_path']:.0f} µs)"
        )
    return "\n".join(lines)


# Where a frame's time goes: cumulative time of functions, in the share of the event loop's
# busy time (its ``_run_once`` less the time waiting in epoll). Indented parts are inside the
# part above them; aiomqtt's publish is a task of its own (``asyncio.gather``), not inside
# ``_station``. cProfile charges every call, so call-heavy parts (generators) look heavier.
PROFILE_PARTS = (
    (
        "server.py _station: read, split, parse, translate, answer",
        r"gateway/server\.py",
        "_station",
    ),
    ("  the splitter's feed (SL 651's parses the frame)", r"devices/(hj212|sl651)\.py", "feed"),
    ("  the dialect's read (HJ 212's parses here) + translate", r"gateway/dialects\.py", "read_.*"),
    ("aiomqtt Client.publish: one task per message", r"aiomqtt/client\.py", "publish"),
    ("  its _pending_call: scans every pending mid, twice", r"aiomqtt/client\.py", "_pending_call"),
    ("  its warning 'There are N pending publish calls.'", r"logging/__init__\.py", "warning"),
    ("paho's loop_read: PUBACKs in", r"paho/.*client\.py", "loop_read"),
    (
        "  paho's _update_inflight: each PUBACK walks the outstanding",
        r"paho/.*client\.py",
        "_update_inflight",
    ),
    ("paho's loop_write: PUBLISHes out", r"paho/.*client\.py", "loop_write"),
)


def profile_report(path: Path, top: int) -> dict[str, Any]:
    """From a cProfile output: the event loop's busy time, the parts above as shares of it, and
    the ``top`` functions by own time (start-up included: registry loading shows there)."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]

    def cum(file: str, func: str) -> float:
        return sum(
            v[3]
            for (f, _line, fn), v in stats.items()
            if re.search(file, f) and re.fullmatch(func, fn)
        )

    idle = sum(v[2] for (_f, _l, fn), v in stats.items() if "poll' of 'select.epoll" in fn)
    busy = cum(r"asyncio/base_events\.py", "_run_once") - idle
    parts = [
        {"part": label, "cum_s": round(c, 2), "pct_of_loop_busy": round(c / busy * 100, 1)}
        for label, file, func in PROFILE_PARTS
        if (c := cum(file, func)) > 0
    ]
    rows: list[dict[str, Any]] = []
    for (file, line, func), (_cc, calls, own, total, _callers) in stats.items():
        where = f"{Path(file).name}:{line}({func})" if line else func
        rows.append({"function": where, "calls": calls, "own_s": own, "cum_s": total})
    rows.sort(key=lambda r: -r["own_s"])
    return {
        "loop_busy_s": round(busy, 2),
        "loop_idle_s": round(idle, 2),
        "parts": parts,
        "top_own_time": rows[:top],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=DURATION_S, help="s measured per run")
    parser.add_argument(
        "--stations",
        default=",".join(map(str, STATIONS)),
        help="station connections per run, comma-separated (default 200,1000)",
    )
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="hj212,sl651")
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds: 20 stations, 2 s (make test)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each protocol's gateway under cProfile at the largest station count and "
        "print its top costs (figures slowed by the profiler; written to --out as well)",
    )
    parser.add_argument("--out", type=Path, default=None, help="bench-gateway-results.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    counts = [int(x) for x in args.stations.split(",")]
    protocols = args.protocols.split(",")
    duration, warmup, ref_s = args.duration, WARMUP_S, REFERENCE_S
    if args.quick:
        counts, duration, warmup, ref_s = [20], 2.0, 0.5, 0.2
    out = args.out or REPO / (
        "bench-gateway-profile.json" if args.profile else "bench-gateway-results.json"
    )

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="citysense-bench-gateway-"))
    broker: ManagedProcess | None = None
    runs: list[dict[str, Any]] = []
    refs: dict[str, dict[str, float]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    try:
        registry = root / "registry.yaml"
        stations = write_registry(registry, max(counts))
        say(f"registry: the example city + {max(counts)} stations of each protocol")
        for protocol in protocols:
            refs[protocol] = reference(protocol, registry, ref_s)
            say(f"reference {protocol}: {refs[protocol]['parse']:,.0f} frames/s parse alone")
        port = free_port()
        files = brokerauth.broker_files(
            root / "broker", port, free_port(), registry=load_registry(registry)
        )
        broker = start_mosquitto(port, root / "mosquitto", MOSQUITTO_CONF, files.listeners)
        setup = Setup(root, registry, stations, broker)
        say(f"Mosquitto on port {port} under {root}")
        for protocol in protocols:
            for n in [max(counts)] if args.profile else counts:
                cprofile = root / f"{protocol}.prof" if args.profile else None
                say(f"{protocol}: {n} stations, {warmup:g} s warm-up + {duration:g} s")
                run = load_run(setup, protocol, n, duration, warmup, cprofile)
                runs.append(run)
                lat = run["latency_ms"]
                say(
                    f"  {run['frames_per_s']:,.0f} frames/s, p50 {lat['p50'] or 0:.1f} ms, "
                    f"p99 {lat['p99'] or 0:.1f} ms, gateway CPU {run['gateway_cpu_pct']:.0f} %, "
                    f"unanswered {run['unanswered']}"
                )
                if cprofile is not None:
                    profiles[protocol] = profile_report(cprofile, 25)
    finally:
        if broker is not None:
            broker.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "profiled": args.profile,
        "duration_s": duration,
        "warmup_s": warmup,
        "stations": counts,
        "reference_frames_per_s": refs,
        "runs": runs,
        "unanswered": sum(r["unanswered"] for r in runs),
        "runtime_s": time.monotonic() - began,
    }
    for r in runs:  # the figure read against this machine in this run
        r["ratio_to_parse_only"] = r["frames_per_s"] / refs[r["protocol"]]["parse"]
    if profiles:
        results["profile"] = profiles
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print()
    print(
        f"citysense gateway benchmark: {duration:g} s per run, {os.cpu_count()} CPUs"
        + (" (under cProfile: slowed)" if args.profile else "")
    )
    print(table(results))
    for protocol, prof in profiles.items():
        print(
            f"\ncProfile, {protocol} gateway: event loop busy {prof['loop_busy_s']} s, "
            f"waiting in epoll {prof['loop_idle_s']} s; cumulative, % of busy (nested overlap):"
        )
        for part in prof["parts"]:
            print(f"  {part['pct_of_loop_busy']:5.1f}%  {part['cum_s']:6.2f} s  {part['part']}")
        print("  top own time (start-up included):")
        for r in prof["top_own_time"]:
            print(
                f"  own {r['own_s']:6.2f} s  cum {r['cum_s']:6.2f} s  {r['calls']:>9}  "
                f"{r['function']}"
            )
    print(f"wrote {out}; {results['runtime_s']:.0f} s in all")
    bad = results["unanswered"] or any(r["connect_failed"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
