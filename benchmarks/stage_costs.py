"""Per-message cost of each ingest stage, on the simulator's example city (no I/O).

Runs the simulator dry (an hour of the example city with every scenario), then times each
stage over the same messages: MQTT receive (parsing PUBLISH packets from 64 KiB reads, as the
consumer does), decode + validate, the rule engine, line protocol. Prints
microseconds per message, overall and per (kind, channel). Run: `make bench-stages`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

from devices.registry import load_registry
from ingest.intake.decode import Decoded, Decoder
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.mqtt.codec import parse
from rules.engine import Engine
from rules.loader import load_rules
from simulator import SimulationConfig, dry_run

ROOT = Path(__file__).resolve().parents[1]
READ_SIZE = 65_536  # what one socket read typically returns to the consumer under load


def publish_frame(topic: str, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH as the broker sends it."""
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big")
    body += payload
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x32]) + bytes(length) + body


def main() -> None:
    """Time the stages; print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per simulated second")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes; the median is shown")
    args = parser.parse_args()

    registry = load_registry(ROOT / "config" / "registry.yaml")
    rules = load_rules(ROOT / "config" / "rules.yaml", registry)
    start_ms = time.time_ns() // 1_000_000 - round(args.duration * 1000) - 60_000
    config = SimulationConfig(
        rate=args.rate,
        duration=args.duration,
        scenarios=("flood", "pollution", "accident", "tailgating"),
        seed=7,
    )
    raw = [
        (m.topic, m.payload.model_dump_json(exclude_none=True).encode())
        for _, m in dry_run(config, registry, start_ms)
    ]
    now = time.time_ns() // 1_000_000
    decoder = Decoder(registry, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10)
    decoded = [d for d in (decoder.decode(t, p, now) for t, p in raw) if isinstance(d, Decoded)]
    encoder = LineEncoder(registry, PlateHasher(b"bench"))
    stream = b"".join(publish_frame(t, p, i % 65535 + 1) for i, (t, p) in enumerate(raw))
    reads = [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def receive_all() -> None:
        buf = bytearray()
        for chunk in reads:
            buf += chunk
            _, used = parse(buf)
            del buf[:used]

    def decode_all() -> None:
        for topic, payload in raw:
            decoder.decode(topic, payload, now)

    def rules_all() -> None:
        engine = Engine(rules, registry)
        for d in decoded:
            engine.observe(d.device, d.channel, d.message, d.ts_ms)

    def encode_all() -> None:
        for d in decoded:
            encoder.encode(d)

    print(f"{len(raw)} messages ({len(decoded)} valid), {args.repeat} passes, median:")
    for name, stage in (
        ("mqtt receive", receive_all),
        ("decode+validate", decode_all),
        ("rules", rules_all),
        ("line protocol", encode_all),
    ):
        runs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            stage()
            runs.append(time.perf_counter() - t0)
        print(f"  {name:16} {statistics.median(runs) / len(raw) * 1e6:7.2f} µs/message")

    # The rules per (kind, channel): which messages cost what.
    engine = Engine(rules, registry)
    spent: dict[str, list[float]] = defaultdict(list)
    for d in decoded:
        t0 = time.perf_counter()
        engine.observe(d.device, d.channel, d.message, d.ts_ms)
        spent[f"{d.kind.value}/{d.channel.value}"].append(time.perf_counter() - t0)
    print("  rules by topic:")
    for key, times in sorted(spent.items()):
        print(
            f"    {key:16} {statistics.mean(times) * 1e6:7.2f} µs/message ({len(times)} messages)"
        )


if __name__ == "__main__":
    main()
