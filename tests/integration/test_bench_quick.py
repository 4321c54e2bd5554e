"""`make bench` in miniature, inside `make test`, so the benchmark cannot break unnoticed.

It once did (an import moved and nobody ran it for days). This runs the real harness —
its own Mosquitto and InfluxDB, the reference drain, citysense end to end, the alert latency
run and an InfluxDB outage — with a small K and one repetition, and checks that it finishes
and that nothing was lost. Speed is not judged here (a timed test on a shared machine is
noise); the figures are `make bench`'s job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.serviceproc import REPO


def run_bench(module: str, args: list[str]) -> None:
    """``python -m module args`` from the repository; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_quick_bench_runs_end_to_end_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--k", "10000", "--repeat", "1", "--rate", "300", "--duration", "3"]
    args += ["--outage", "3", "--out", str(out)]
    run_bench("benchmarks.run", args)
    results = json.loads(out.read_text())
    assert results["lost_messages"] == 0
    assert results["citysense_msgs_per_s"]["stored"] == [10000]
    assert results["influx_outage"]["stored"] == 10000
    latency = results["alert_latency_ms"]
    assert latency["triggers"] > 0 and latency["alerts_matched"] == latency["triggers"]
    assert results["reference_msgs_per_s"]["median"] > 0


def test_quick_bench_scale_runs_on_both_brokers_and_loses_nothing(tmp_path: Path) -> None:
    """`make bench-scale` in miniature: the same backlog through Mosquitto, through a NATS
    cluster to one worker, and to two partitioned workers."""
    out = tmp_path / "scale.json"
    run_bench("benchmarks.scale", ["--k", "5000", "--out", str(out)])
    runs = json.loads(out.read_text())
    assert [(r["broker"], r["workers"]) for r in runs] == [
        ("mosquitto", 1),
        ("nats", 1),
        ("nats", 2),
    ]
    assert all(r["lost"] == 0 and r["k"] == 5000 and r["msg_per_s"] > 0 for r in runs)


def test_quick_bench_gateway_answers_every_frame_of_both_protocols(tmp_path: Path) -> None:
    """`make bench-gateway` in miniature: a real Mosquitto, each protocol's gateway as a
    process, 20 stations sending back to back from another process for 2 s."""
    out = tmp_path / "gateway.json"
    run_bench("benchmarks.gateway", ["--quick", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["unanswered"] == 0
    runs = {r["protocol"]: r for r in results["runs"]}
    assert set(runs) == {"hj212", "sl651"}
    for protocol, run in runs.items():
        assert run["connected"] == run["stations"] > 0, protocol
        assert run["answered"] > 0 and run["frames_per_s"] > 0, protocol
        assert run["unanswered"] == 0 and run["wrong_answers"] == 0, protocol
        assert run["gateway_counts"]["answered"] == run["answered"], protocol
        for key in ("p50", "p99", "max"):
            assert run["latency_ms"][key] > 0, (protocol, key)
        assert run["gateway_cpu_pct"] > 0 and run["gateway_peak_rss_mb"] > 0, protocol
        assert run["broker_cpu_pct"] >= 0 and run["load_cpu_pct"] >= 0, protocol
        reference = results["reference_frames_per_s"][protocol]
        assert reference["parse"] > 0 and reference["pure_path"] > 0, protocol
