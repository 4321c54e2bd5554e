"""The delivery platforms (ingest/channels/) against fakes that check requests the way each
platform does (tests/fakes/platforms.py), and the channels file (config/channels.yaml)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devices.registry import load_registry
from ingest.channels import Notice, Outcome, Platform, Request
from ingest.channels.common import retry_after_header
from ingest.channels.config import (
    ChannelsConfig,
    ChannelsError,
    load_channels,
    parse_channels,
    platform_of,
)
from ingest.channels.dingtalk import Dingtalk, DingtalkConfig
from ingest.channels.dingtalk import sign as dingtalk_sign
from ingest.channels.feishu import Feishu, FeishuConfig
from ingest.channels.feishu import sign as feishu_sign
from ingest.channels.sms import Sms, SmsConfig
from ingest.channels.webhook import Webhook, WebhookConfig, signature
from ingest.channels.wecom import Wecom, WecomConfig
from ingest.people import load_workers
from tests.fakes.platforms import (
    FakeDingtalk,
    FakeFeishu,
    FakePlatform,
    FakeSms,
    FakeWebhook,
    FakeWecom,
)

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "config" / "registry.yaml")
PEOPLE = load_workers(REPO / "config" / "workers.yaml", REGISTRY)

NOTICE = Notice(
    key="A-1a2b3c:opened:li.na:wecom",
    subject="alert",
    subject_id="A-1a2b3c",
    event="opened",
    severity="critical",
    title="资江邵阳水文站 水位超警戒 (River over warning)",
    place="邵阳市 双清区 龙须塘街道",
    rule="水位超警戒 river_over_warning",
    value="212.34 m",
    at="2026-07-01T10:00:00+08:00",
    link="http://127.0.0.1:8080/alerts/A-1a2b3c",
    lines=("资江邵阳水文站水位 212.34 m，超警戒 0.34 m", "River at 212.34 m, 0.34 m over warning"),
)


def now_ms() -> int:
    return int(time.time() * 1000)


async def send(request: Request) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            request.method, request.url, headers=request.headers, data=request.body
        ) as answer,
    ):
        return answer.status, await answer.read()


async def deliver(platform: Platform, notice: Notice = NOTICE) -> Outcome:
    status, body = await send(platform.request(notice, now_ms()))
    return platform.outcome(status, body)


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakePlatform]]:
    started: list[FakePlatform] = []
    yield started
    for fake in started:
        await fake.stop()


async def up(fakes: list[FakePlatform], fake: Any) -> Any:
    await fake.start()
    fakes.append(fake)
    return fake


def wecom(url: str, key: str = "k-1", **kw: Any) -> Wecom:
    return Wecom(WecomConfig(type="wecom", url=f"{url}/cgi-bin/webhook/send", key=key, **kw))


def dingtalk(url: str, secret: str = "SECgood", **kw: Any) -> Dingtalk:
    config = DingtalkConfig(
        type="dingtalk", url=f"{url}/robot/send", access_token="tok", secret=secret, **kw
    )
    return Dingtalk(config)


def feishu(url: str, secret: str = "good") -> Feishu:
    config = FeishuConfig(
        type="feishu", url=f"{url}/open-apis/bot/v2/hook", hook="h-1", secret=secret
    )
    return Feishu(config)


def sms(url: str, key: str = "sms-key", phone: str = "13907390101") -> Sms:
    raw = yaml.safe_load((REPO / "config" / "channels.yaml").read_text())["endpoints"]["city-sms"]
    return Sms(SmsConfig.model_validate({**raw, "url": f"{url}/sms/send", "key": key}), phone)


def webhook(url: str, secret: str = "whsec") -> Webhook:
    return Webhook(WebhookConfig(type="webhook", url=f"{url}/in", secret=secret))


# --- signatures against values computed independently ---------------------------------------


def test_dingtalk_sign_matches_openssl() -> None:
    # printf '1700000000000\nSECtest-secret' | openssl dgst -sha256 -hmac 'SECtest-secret' \
    #   -binary | base64   →  LC7hxZ4wslL+P7j7gu1hoQ+wzByekL+yWgiUMekZs0g=   then URL-encoded
    assert dingtalk_sign("SECtest-secret", 1700000000000) == (
        "LC7hxZ4wslL%2BP7j7gu1hoQ%2BwzByekL%2ByWgiUMekZs0g%3D"
    )


def test_feishu_sign_matches_openssl() -> None:
    # K=$(printf '1700000000\nfeishu-test-secret' | xxd -p | tr -d '\n')
    # printf '' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$K -binary | base64
    assert feishu_sign("feishu-test-secret", 1700000000) == (
        "e3MJ8Q5llVxGJ8pVkGPBhexDAgjvYqpjPP1GkY9XceI="
    )


def test_webhook_signature_matches_openssl() -> None:
    # printf '1700000000000.{"a":1}' | openssl dgst -sha256 -hmac 'webhook-test-secret'
    assert signature("webhook-test-secret", 1700000000000, b'{"a":1}') == (
        "03a5a4fb081d6ea50b8fe77e8e600d31b9497654c8fdd17fa2c1e84e3123e5a1"
    )


def test_the_requests_carry_the_signature_for_their_time() -> None:
    request = dingtalk("http://x").request(NOTICE, 1700000000000)
    assert f"timestamp=1700000000000&sign={dingtalk_sign('SECgood', 1700000000000)}" in (
        request.url
    )
    body = yaml.safe_load(feishu("http://x").request(NOTICE, 1700000000999).body)
    assert (body["timestamp"], body["sign"]) == ("1700000000", feishu_sign("good", 1700000000))


# --- each platform: accepted, wrong secret, rate limit, down, not JSON ----------------------


async def test_wecom(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeWecom("k-1", rate_per_minute=2))
    good = await deliver(wecom(fake.url))
    assert good == Outcome(True, False, "0", "ok")
    assert fake.delivered[0].json["msgtype"] == "markdown"
    content = fake.delivered[0].json["markdown"]["content"]
    assert all(part in content for part in ("邵阳市 双清区", "212.34 m", "river_over_warning"))
    assert NOTICE.link in content and "2026-07-01T10:00:00+08:00" in content
    mention = await deliver(wecom(fake.url, mention_mobiles=("13907390102",)))
    assert mention.delivered
    assert fake.delivered[1].json["text"]["mentioned_mobile_list"] == ["13907390102"]
    limited = await deliver(wecom(fake.url))
    assert (limited.delivered, limited.retry, limited.code) == (False, True, "45009")
    assert limited.retry_after_s == 60
    wrong = await deliver(wecom(fake.url, key="k-wrong"))
    assert (wrong.delivered, wrong.retry, wrong.code) == (False, False, "93000")


async def test_wecom_cuts_to_its_byte_limit(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeWecom("k-1"))
    long = replace(NOTICE, lines=("很长的一行" * 400,))
    assert (await deliver(wecom(fake.url), long)).delivered
    assert len(fake.delivered[0].json["markdown"]["content"].encode()) <= 4096


async def test_dingtalk(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeDingtalk("tok", "SECgood", rate_per_minute=1))
    good = await deliver(dingtalk(fake.url, mention_mobiles=("13907390401",)))
    assert good.delivered and good.code == "0"
    sent = fake.delivered[0].json
    assert sent["msgtype"] == "markdown" and sent["markdown"]["title"] == NOTICE.title
    assert sent["at"]["atMobiles"] == ["13907390401"] and "@13907390401" in sent["markdown"]["text"]
    limited = await deliver(dingtalk(fake.url))
    assert (limited.retry, limited.code, limited.retry_after_s) == (True, "130101", 60)
    wrong = await deliver(dingtalk(fake.url, secret="SECwrong"))
    assert (wrong.delivered, wrong.retry, wrong.code) == (False, False, "310000")
    assert "sign not match" in wrong.detail


async def test_dingtalk_refuses_a_timestamp_over_an_hour_off(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeDingtalk("tok", "SECgood"))
    platform = dingtalk(fake.url)
    status, body = await send(platform.request(NOTICE, now_ms() - 3_700_000))
    stale = platform.outcome(status, body)
    assert (stale.code, stale.retry, stale.detail) == ("310000", False, "invalid timestamp")


async def test_feishu(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeFeishu("h-1", "good", rate_per_minute=1))
    good = await deliver(feishu(fake.url))
    assert good == Outcome(True, False, "0", "success")
    card = fake.delivered[0].json["card"]
    assert (
        card["header"]["template"] == "red" and card["header"]["title"]["content"] == NOTICE.title
    )
    assert card["elements"][-1]["actions"][0]["url"] == NOTICE.link
    limited = await deliver(feishu(fake.url))
    assert (limited.retry, limited.code) == (True, "11232") and limited.retry_after_s
    wrong = await deliver(feishu(fake.url, secret="bad"))
    assert (wrong.delivered, wrong.retry, wrong.code) == (False, False, "19021")
    platform = feishu(fake.url)
    status, body = await send(platform.request(NOTICE, now_ms() - 3_700_000))
    assert platform.outcome(status, body).code == "19021"


async def test_feishu_keeps_under_20_kb(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeFeishu("h-1", "good"))
    long = replace(NOTICE, lines=tuple('很长的"一行"' for _ in range(3000)))
    assert (await deliver(feishu(fake.url), long)).delivered
    assert len(fake.delivered[0].body) <= 20 * 1024


async def test_feishu_five_a_second(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeFeishu("h-1", "good", rate_per_second=2))
    outcomes = [await deliver(feishu(fake.url)) for _ in range(3)]
    assert [o.delivered for o in outcomes] == [True, True, False]
    assert outcomes[2].retry


async def test_sms(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeSms("sms-key", rate_per_minute=1))
    good = await deliver(sms(fake.url))
    assert (good.delivered, good.code) == (True, "OK")
    sent = fake.delivered[0].json
    assert sent["mobile"] == "13907390101" and sent["requestId"] == NOTICE.key
    assert len(sent["content"]) <= 201 and "212.34 m" in sent["content"]
    limited = await deliver(sms(fake.url))
    assert (limited.delivered, limited.retry, limited.code) == (False, True, "FLOW_CONTROL")
    wrong = await deliver(sms(fake.url, key="nope"))
    assert (wrong.delivered, wrong.retry, wrong.code) == (False, False, "AUTH_FAILED")


async def test_sms_text_is_cut_to_its_segments(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeSms("sms-key", max_chars=201))
    long = replace(NOTICE, title="水位" * 300)
    assert (await deliver(sms(fake.url), long)).delivered
    assert len(fake.delivered[0].json["content"]) == 201


async def test_webhook(fakes: list[FakePlatform]) -> None:
    fake = await up(fakes, FakeWebhook("whsec", rate_per_minute=2))
    platform = webhook(fake.url)
    assert platform.idempotent
    first, again = await deliver(platform), await deliver(platform)
    assert first.delivered and again.delivered
    assert fake.keys() == {NOTICE.key: 1}  # the retry was dropped by the key
    assert fake.duplicates() == {NOTICE.key: 1}
    other = replace(NOTICE, key="k-2")
    assert (await deliver(platform, other)).delivered
    limited = await deliver(platform, replace(NOTICE, key="k-3"))
    assert (limited.retry, limited.code) == (True, "429")
    assert retry_after_header({"Retry-After": "30"}) == 30
    wrong = await deliver(webhook(fake.url, secret="bad"))
    assert (wrong.delivered, wrong.retry, wrong.code) == (False, False, "401")


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "feishu", "sms", "webhook"])
async def test_down_is_retried(fakes: list[FakePlatform], kind: str) -> None:
    fake: FakePlatform = {
        "wecom": lambda: FakeWecom("k-1"),
        "dingtalk": lambda: FakeDingtalk("tok", "SECgood"),
        "feishu": lambda: FakeFeishu("h-1", "good"),
        "sms": lambda: FakeSms("sms-key"),
        "webhook": lambda: FakeWebhook("whsec"),
    }[kind]()
    await up(fakes, fake)
    platform: Platform = {
        "wecom": wecom,
        "dingtalk": dingtalk,
        "feishu": feishu,
        "sms": sms,
        "webhook": webhook,
    }[kind](fake.url)
    fake.down = True
    down = await deliver(platform)
    assert (down.delivered, down.retry, down.code) == (False, True, "500")
    fake.down = False
    assert (await deliver(platform)).delivered
    assert len(fake.delivered) == 1 and len(fake.received) == 2


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "feishu", "sms"])
def test_an_answer_that_is_not_json(kind: str) -> None:
    platform: Platform = {"wecom": wecom, "dingtalk": dingtalk, "feishu": feishu, "sms": sms}[kind](
        "http://x"
    )
    page = b"<html>502 Bad Gateway</html>"
    assert platform.outcome(200, page).code == "bad_answer"
    assert not platform.outcome(200, page).delivered
    assert platform.outcome(502, page) == Outcome(False, True, "502", page.decode())
    assert platform.outcome(200, b"").code == "bad_answer"
    assert platform.outcome(404, page).retry is False


def test_robots_are_not_idempotent() -> None:
    assert not any(
        p.idempotent for p in (wecom("http://x"), dingtalk("http://x"), feishu("http://x"))
    )


# --- the channels file ------------------------------------------------------------------------


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config" / "channels.yaml").read_text())
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ChannelsError) as caught:
        parse_channels(data, PEOPLE, REGISTRY, "channels.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_example_file_loads_and_every_endpoint_is_local() -> None:
    config = load_channels(REPO / "config" / "channels.yaml", PEOPLE, REGISTRY)
    assert config.escalate_undelivered_after == 600_000
    for endpoint in config.endpoints.values():
        request = platform_of(endpoint, "13900000000").request(NOTICE, now_ms())
        assert request.url.startswith("http://127.0.0.1:")
    assert config.severities.of("warning") == ("wecom", "dingtalk", "feishu")
    assert "sms" in config.severities.of("critical")


def test_defaults() -> None:
    config = parse_channels({}, PEOPLE, REGISTRY)
    assert config == ChannelsConfig()
    assert config.severities.major == ("wecom", "dingtalk", "feishu", "webhook")
    assert (config.quiet_hours.start, config.quiet_hours.end) == ("22:00", "07:00")


def test_quiet_hours_span_midnight() -> None:
    quiet = ChannelsConfig().quiet_hours
    at_23 = 1782918000000  # 2026-07-01T23:00:00+08:00
    assert quiet.quiet(at_23) and not quiet.quiet(at_23 - 2 * 3_600_000)
    assert quiet.ends_at(at_23) == at_23 + 8 * 3_600_000  # 07:00 the next morning
    assert quiet.ends_at(at_23 - 2 * 3_600_000) == at_23 - 2 * 3_600_000


def test_named_problems() -> None:
    data = example()
    data["people"]["nobody.here"] = {"endpoints": ["city-command-wecom"]}
    data["people"]["li.na"] = {"endpoints": ["no-such-endpoint"]}
    data["departments"]["no_such_dept"] = ["traffic-feishu"]
    data["departments"]["department/flood_hq/430500"] = ["traffic-feishu"]
    data["departments"]["traffic_police"] = ["city-sms"]
    found = problems(data)
    assert "channels.yaml: people.nobody.here: (key): no person 'nobody.here'" in found
    assert "channels.yaml: people.li.na: endpoints.0: no endpoint 'no-such-endpoint'" in found
    assert "channels.yaml: departments.no_such_dept: (key): no department 'no_such_dept'" in found
    assert any("department/flood_hq/430500: (key): flood_hq has no unit" in p for p in found)
    assert any(
        "departments.traffic_police: (list).0: city-sms is an sms gateway" in p for p in found
    )


def test_bad_quiet_hours_and_fields() -> None:
    data = example()
    data["quiet_hours"] = {"start": "25:00", "end": "07:00", "tz": "Mars/Olympus"}
    data["endpoints"]["traffic-feishu"]["colour"] = "red"
    data["endpoints"]["bad-type"] = {"type": "telegram"}
    found = problems(data)
    assert any(p.startswith("channels.yaml: (top): quiet_hours.start:") for p in found)
    assert any("quiet_hours.tz: Value error, 'Mars/Olympus' is not a time zone" in p for p in found)
    assert any("endpoints.traffic-feishu: colour: Extra inputs" in p for p in found)
    assert any(p.startswith("channels.yaml: endpoints.bad-type:") for p in found)


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"endpoints": {"hook": {"type": "webhook", "url": "http://x", "secret": "env:WH_S"}}}
    monkeypatch.delenv("WH_S", raising=False)
    assert problems(data) == [
        "channels.yaml: endpoints.hook: secret: Value error, environment variable WH_S is not set"
    ]
    monkeypatch.setenv("WH_S", "from-env")
    config = parse_channels(data, PEOPLE, REGISTRY)
    endpoint = config.endpoints["hook"]
    assert isinstance(endpoint, WebhookConfig)
    assert endpoint.secret.get_secret_value() == "from-env"
    assert "from-env" not in repr(config)


def test_sms_needs_a_phone() -> None:
    data = example()
    data["people"] = {"water.sq": {"sms": "city-sms"}}  # no phone in the people file
    assert problems(data) == [
        "channels.yaml: people.water.sq: phone: no phone here or in the people file"
    ]


def test_the_examples_in_the_operations_guide_load(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Delivery channels", 1)[1].split("\n## ", 1)[0]
    merged: dict[str, Any] = {"endpoints": {}}
    for block in re.findall(r"^```yaml\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        data = yaml.safe_load(block)
        merged["endpoints"].update(data.pop("endpoints", {}))
        merged.update(data)
    for name in re.findall(r"env:(\w+)", section):
        monkeypatch.setenv(name, "example")
    config = parse_channels(merged, PEOPLE, REGISTRY, "docs/operations.md")
    assert set(config.endpoints) >= {"city-command-wecom", "flood-sq-dingtalk", "city-sms"}
