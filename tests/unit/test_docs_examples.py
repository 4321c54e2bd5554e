"""The examples in docs/ are what the code accepts: a device maker or an operator may copy them.

- Each ```yaml block of docs/rules.md is a rule file: it must load with the project's rule loader
  against the example registry, and together the blocks must show every rule form.
- The registry and workers examples of docs/operations.md load with their own loaders.
- Each ```json block of docs/payloads.md is a device payload for the topic written in backticks
  on the line above it. A plain ```json block must be accepted (by its payload model, and by the
  service's decoder as received at ``NOW_MS``); a block whose info string says
  ``json rejected=REASON`` must be refused by the decoder with that dead-letter reason. Together
  the accepted blocks must cover every (kind, channel) that has a schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from devices.kinds import Channel, Kind
from devices.payloads import SCHEMAS, schema_for
from devices.registry import Registry, load_registry, parse_registry
from devices.topics import parse_device_topic
from ingest.intake.decode import Decoded, Decoder, Rejection
from ingest.people import parse_workers
from rules.loader import parse_rules
from rules.model import FORMS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The examples' timestamps sit around 2026-06-01T08:00:00+08:00; the decoder judges them as if
# received then, so the timestamp window (README, "Hostile payloads") applies as in service.
NOW_MS = 1_780_272_000_000
# What docs/payloads.md says the service's limits are (ingest/settings.py defaults).
MAX_PAYLOAD_BYTES = 16_384
FUTURE_SKEW_MS = 300_000
MAX_AGE_MS = 30 * 86_400_000

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_TOPIC = re.compile(r"`(iot/[^`\s]+)`")


class Block(NamedTuple):
    """A fenced block: its info string, its text and the line before the fence."""

    info: str
    text: str
    line_above: str
    line_no: int


def blocks(path: Path, language: str) -> list[Block]:
    """The fenced blocks of ``path`` whose info string starts with ``language``."""
    source = path.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(source):
        info = m.group(1).strip()
        if info.split(" ", 1)[0] != language:
            continue
        before = source[: m.start()].rstrip("\n").splitlines()
        above = next((line for line in reversed(before) if line.strip()), "")
        found.append(Block(info, m.group(2), above, source.count("\n", 0, m.start()) + 1))
    return found


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(ROOT / "config" / "registry.yaml")


def rule_blocks() -> list[Block]:
    return blocks(DOCS / "rules.md", "yaml")


def payload_blocks() -> list[Block]:
    return blocks(DOCS / "payloads.md", "json")


def _id(block: Block) -> str:
    return f"line{block.line_no}"


@pytest.mark.parametrize("block", rule_blocks(), ids=_id)
def test_rule_example_loads(block: Block, registry: Registry) -> None:
    """Loaded as ``citysense rules check`` would, so every error names the field."""
    parse_rules(yaml.safe_load(block.text), f"docs/rules.md:{block.line_no}", registry)


def test_rule_examples_show_every_form(registry: Registry) -> None:
    shown = {
        rule.type
        for b in rule_blocks()
        for rule in parse_rules(yaml.safe_load(b.text), "docs/rules.md", registry)
    }
    assert shown == set(FORMS)


def test_registry_and_workers_examples() -> None:
    found = [yaml.safe_load(b.text) for b in blocks(DOCS / "operations.md", "yaml")]
    registries = [d for d in found if isinstance(d, dict) and "areas" in d]
    workers = [d for d in found if isinstance(d, dict) and "workers" in d]
    assert len(registries) == 1 and len(workers) == 1
    registry = parse_registry(registries[0], "docs/operations.md")
    assert {d.kind for d in registry.devices.values()} == set(Kind)
    assert parse_workers(workers[0], registry, "docs/operations.md")


def _decoder(registry: Registry) -> Decoder:
    return Decoder(
        registry,
        max_payload_bytes=MAX_PAYLOAD_BYTES,
        future_skew_ms=FUTURE_SKEW_MS,
        max_age_ms=MAX_AGE_MS,
    )


def _topic_of(block: Block) -> str:
    m = _TOPIC.search(block.line_above)
    assert m, f"docs/payloads.md:{block.line_no}: no `iot/...` topic on the line above the block"
    return m.group(1)


@pytest.mark.parametrize("block", payload_blocks(), ids=_id)
def test_payload_example(block: Block, registry: Registry) -> None:
    topic = _topic_of(block)
    payload = block.text.strip().encode()
    result = _decoder(registry).decode(topic, payload, NOW_MS)
    expected = dict(w.split("=", 1) for w in block.info.split()[1:] if "=" in w).get("rejected")
    if expected is not None:
        assert isinstance(result, Rejection), f"{topic}: accepted, docs say {expected}"
        assert result.reason == expected, result.detail
        return
    assert isinstance(result, Decoded), f"{topic}: {result}"
    kind, _, channel = parse_device_topic(topic)
    model = schema_for(kind, channel)
    assert model is not None
    model.model_validate_json(payload)


def test_payload_examples_cover_every_schema() -> None:
    shown: set[tuple[Kind, Channel]] = set()
    for b in payload_blocks():
        if "rejected=" not in b.info:
            kind, _, channel = parse_device_topic(_topic_of(b))
            shown.add((kind, channel))
    assert shown == set(SCHEMAS)


def test_payload_limits_match_the_settings() -> None:
    """The limits the examples are judged by are the service's defaults."""
    from ingest.settings import Settings

    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    assert defaults["max_payload_bytes"] == MAX_PAYLOAD_BYTES
    assert defaults["future_skew_s"] * 1000 == FUTURE_SKEW_MS
    assert defaults["max_age_s"] * 1000 == MAX_AGE_MS


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_links_stay_inside_the_repository_and_resolve(doc: str) -> None:
    """Every relative link names a file of the repository (and a heading in it, if it says)."""
    path = ROOT / doc if doc == "README.md" else DOCS / doc
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.is_relative_to(ROOT) and linked.exists(), f"{doc}: {target}"
        if anchor:
            headings = _HEADING.findall(linked.read_text(encoding="utf-8"))
            assert anchor in {_anchor(h) for h in headings}, f"{doc}: {target}"
