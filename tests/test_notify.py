"""Alert delivery end to end: alerts raised through the alert store, notifications planned,
grouped, silenced and escalated by the notifier, and delivered to a local SMTP server and
local HTTP receivers standing in for the robots' endpoints (the clock is injected)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml

from notify.config import NotifyConfig
from notify.context import FAILED, Context
from notify.core import AlertInfo, matches, render, route
from notify.deliver import deliver
from notify.escalate import escalate
from notify.plan import plan
from notify.service import run_once
from notify.silences import add_silence
from tests.receivers import HttpReceiver, SmtpReceiver
from urbanpulse.alerts.lifecycle import Evaluation, Signal, Timing
from urbanpulse.alerts.store import AlertMeta, advance
from urbanpulse.contract import default_registry
from urbanpulse.rulefmt.model import catalogue_files, load_rules

TZ = ZoneInfo("Asia/Shanghai")
CATALOGUE = load_rules(catalogue_files(), default_registry())
RULES = {r.id: r for r in CATALOGUE.rules}
PONDING = RULES["flood.ponding_15cm"]
META = AlertMeta(PONDING.id, PONDING.severity, PONDING.owner, PONDING.labels)
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
Conn = psycopg.Connection[Any]


def config(smtp: SmtpReceiver, http: HttpReceiver, **over: Any) -> NotifyConfig:
    spec: dict[str, Any] = {
        "group_wait": "30s",
        "escalation": {"critical": "15m", "warning": None},
        "max_attempts": 3,
        "backoff": "30s",
        "lease": "5s",
        "ack_url": "https://ops.example/alerts/{alert_id}",
        "channels": {
            "zjw-mail": {"type": "apprise", "url": smtp.url("duty@zjw.example")},
            "zjw-robot": {"type": "apprise", "url": http.url("zjw-robot", "json")},
            "zjw-leader": {"type": "webhook", "url": http.url("zjw-leader")},
            "yjj-robot": {"type": "apprise", "url": http.url("yjj-robot", "json")},
            "ops-robot": {"type": "webhook", "url": http.url("ops-robot")},
            "broken": {"type": "webhook", "url": http.url("broken")},
            "slow": {"type": "webhook", "url": http.url("slow")},
            "unset": {"type": "apprise", "url_env": "URBANPULSE_TEST_NOT_SET"},
        },
        "departments": {
            "区住房城乡建委": {
                "on_call": [
                    {"people": ["张伟（值班员）"], "channels": ["zjw-mail", "zjw-robot"]},
                    {"people": ["李娜（科长）"], "channels": ["zjw-leader"]},
                ]
            },
            "区应急局": {"on_call": [{"channels": ["yjj-robot"]}]},
            "运维中心": {"on_call": [{"channels": ["ops-robot", "broken", "unset"]}]},
        },
        "routes": [{"match": {"rule_id": "flood.ponding_15cm"}, "also": ["区应急局"]}],
    }
    spec.update(over)
    return NotifyConfig.model_validate(spec)


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as s:
        yield s


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with HttpReceiver() as h:
        yield h


def ctx_of(cfg: NotifyConfig) -> Context:
    return Context(cfg, RULES, TZ, tuple(CATALOGUE.kpis))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def raise_alerts(conn: Conn, *entities: str, meta: AlertMeta = META, value: float = 21.0) -> None:
    for e in entities:
        conn.execute(
            "INSERT INTO devices (device_id, domain, kind, name, zone) VALUES "
            "(%s, 'flood', 'depth_gauge', %s, '老城片区') ON CONFLICT DO NOTHING",
            (e, f"{e} 低洼点"),
        )
        advance(conn, meta, e, [Evaluation(at(0), Signal.BREACH, value)], Timing())
    conn.commit()


def clear_alerts(conn: Conn, *entities: str) -> None:
    for e in entities:
        advance(conn, META, e, [Evaluation(at(30), Signal.CLEAR, 3.0)], Timing())


def outbox_age(conn: Conn, minutes: float) -> None:
    """Date the outbox rows as if written `minutes` before T0 (they carry the real clock)."""
    conn.execute("UPDATE notify_outbox SET created_at = %s", (at(-minutes),))
    conn.commit()


def test_alerts_are_grouped_per_department_and_channel_and_say_what_to_do(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    raise_alerts(conn, "fl-a", "fl-b")
    conn.execute("UPDATE notify_outbox SET created_at = %s", (T0,))
    conn.commit()
    assert plan(conn, ctx, at(0.25)) == 0  # still waiting for the group to fill
    # two alerts: one message per channel of the owner (mail and robot) and one to 区应急局
    assert plan(conn, ctx, at(0.5)) == 3
    assert plan(conn, ctx, at(1)) == 0  # planned once
    assert deliver(conn, ctx, at(1)) == (3, 0)
    [mail] = smtp.mails
    assert mail.to == ["duty@zjw.example"]
    assert "车行道积水深度超过15厘米" in mail.subject
    text = mail.text
    assert text.index("责任单位") < text.index("Department")  # Chinese first, English second
    assert "张伟（值班员）" in text
    for want in ("fl-a 低洼点", "fl-b", "21", ">= 15", "二、(四)", "GB 51222", "2026-11-27 16:00"):
        assert want in text, want
    assert "https://ops.example/alerts/" in text
    [robot] = http.at("zjw-robot")
    assert robot.headers["Idempotency-Key"].startswith("firing:zjw-robot:")
    assert "fl-a" in robot.body["message"] and "fl-b" in robot.body["message"]
    assert len(http.at("yjj-robot")) == 1
    # they resolve: one resolution message per channel
    clear_alerts(conn, "fl-a", "fl-b")
    outbox_age(conn, 1)
    assert plan(conn, ctx, at(0)) == 3
    deliver(conn, ctx, at(0))
    assert "已恢复" in smtp.mails[-1].subject and len(http.at("zjw-robot")) == 2


def test_a_silence_holds_notifications_back_but_the_alert_still_fires(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    add_silence(
        conn,
        {"entity": "fl-a"},
        starts_at=at(-60),
        ends_at=at(60),
        author="张伟",
        reason="排水管网改造，维护窗口",
    )
    raise_alerts(conn, "fl-a", "fl-b")
    outbox_age(conn, 1)
    run_once(conn, ctx, at(0))
    assert "fl-b" in smtp.mails[0].text and "fl-a" not in smtp.mails[0].text
    status = conn.execute("SELECT entity, status FROM alerts ORDER BY 1").fetchall()
    assert status == [("fl-a", "firing"), ("fl-b", "firing")]
    silenced = conn.execute("SELECT silenced_by FROM alert_notify_state ORDER BY alert_id")
    assert [r[0] for r in silenced.fetchall()] == [1, None]


def test_an_unacknowledged_alert_escalates_and_an_acknowledged_one_does_not(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    raise_alerts(conn, "fl-a", "fl-b")
    outbox_age(conn, 1)
    run_once(conn, ctx, at(0))
    conn.execute(
        "INSERT INTO alert_acks (alert_id, acked_by) "
        "SELECT id, '李娜' FROM alerts WHERE entity = 'fl-b'"
    )
    conn.commit()
    assert escalate(conn, ctx, at(14)) == 0  # critical: 15 minutes
    assert escalate(conn, ctx, at(16)) == 1  # fl-a only: fl-b was acknowledged
    deliver(conn, ctx, at(16))
    [leader] = http.at("zjw-leader")
    assert "升级1级" in leader.body["title"] and "fl-a" in leader.body["body"]
    assert "李娜（科长）" in leader.body["body"]
    assert leader.headers["Idempotency-Key"].startswith("escalation:")
    # past the last level, the leader is reminded every repeat_interval until acknowledged
    assert escalate(conn, ctx, at(60)) == 0
    assert escalate(conn, ctx, at(16 + 4 * 60 + 1)) == 1
    conn.execute("INSERT INTO alert_acks (alert_id, acked_by) SELECT id, '李娜' FROM alerts "
                 "WHERE entity = 'fl-a'")  # fmt: skip
    conn.commit()
    assert escalate(conn, ctx, at(16 + 8 * 60 + 1)) == 0
    # the reminder planned but not yet sent when it was acknowledged is dropped, saying why
    assert deliver(conn, ctx, at(16 + 8 * 60 + 1)) == (0, 0)
    last = conn.execute(
        "SELECT state, last_error FROM notifications ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert last == ("dead", "acknowledged before it was sent")


def test_a_failing_channel_is_retried_with_backoff_then_given_up_and_blocks_no_other(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    http.fail.add("/broken")
    offline = AlertMeta("device.offline", "warning", "运维中心", {"domain": "device"})
    raise_alerts(conn, "wn-a", meta=offline)
    outbox_age(conn, 1)
    before = FAILED.labels("broken")._value.get()
    assert plan(conn, ctx, at(0)) == 3
    assert deliver(conn, ctx, at(0)) == (1, 1)  # ops-robot delivered, broken failed
    assert len(http.at("ops-robot")) == 1
    rows = dict(
        conn.execute("SELECT channel, state FROM notifications ORDER BY channel").fetchall()
    )
    # the channel without its URL variable is off: recorded, with what to set, never retried
    assert rows == {"broken": "pending", "ops-robot": "sent", "unset": "dead"}
    assert deliver(conn, ctx, at(0.25)) == (0, 0)  # backoff: 30 s
    assert deliver(conn, ctx, at(0.6)) == (0, 1)  # second attempt, then 60 s
    assert deliver(conn, ctx, at(1.2)) == (0, 0)
    assert deliver(conn, ctx, at(1.7)) == (0, 1)  # third and last
    state, attempts, error = conn.execute(
        "SELECT state, attempts, last_error FROM notifications WHERE channel = 'broken'"
    ).fetchone() or (None, None, None)
    assert (state, attempts, error) == ("dead", 3, f"webhook 127.0.0.1:{http.port}: HTTP 500")
    assert FAILED.labels("broken")._value.get() - before == 3
    tried = conn.execute("SELECT count(*), count(*) FILTER (WHERE ok) FROM notification_attempts")
    assert tried.fetchone() == (4, 1)
    unset = conn.execute("SELECT last_error FROM notifications WHERE channel = 'unset'").fetchone()
    assert unset == ("channel not configured: set URBANPULSE_TEST_NOT_SET",)


def test_routes_and_matchers() -> None:
    cfg = NotifyConfig.model_validate(
        {
            "channels": {"x": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
            "departments": {
                d: {"on_call": [{"channels": ["x"]}]}
                for d in ("区住房城乡建委", "区水利局", "区应急局")
            },
            "routes": [
                {"match": {"domain": "water", "district": "凤凰湖片区"}, "department": "区水利局"},
                {"match": {"severity": "critical"}, "also": ["区应急局"]},
            ],
        }
    )
    base = {
        "id": 1, "rule_id": "water.leakage_daily", "entity": "DMA-FHH", "status": "firing",
        "severity": "major", "owner": "区住房城乡建委", "labels": {"domain": "water"},
        "value": 12.0, "started_at": T0, "ended_at": None,
    }  # fmt: skip
    fhh = AlertInfo(**base, district="凤凰湖片区")  # type: ignore[arg-type]
    xlh = AlertInfo(**{**base, "entity": "DMA-XLH", "severity": "critical"}, district="中心城区")  # type: ignore[arg-type]
    assert route(fhh, cfg) == ["区水利局"]
    assert route(xlh, cfg) == ["区住房城乡建委", "区应急局"]
    assert matches(xlh, {"zone": "DMA-X*"}) and not matches(xlh, {"labels.domain": "air"})
    msg = render("firing", "区水利局", [fhh], cfg, TZ)
    assert msg.title.startswith("【重要】") and msg.alert_ids == [1]


def _notifier(tmp_path: Path, db_url: str, cfg: NotifyConfig) -> subprocess.Popen[bytes]:
    path = tmp_path / "notify.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True))
    env = dict(
        os.environ,
        URBANPULSE_DATABASE_URL=db_url,
        URBANPULSE_NOTIFY_CONFIG=str(path),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "urbanpulse.cli", "notify", "--interval", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_killed_while_sending_then_restarted_each_message_arrives_once(
    tmp_path: Path, db_url: str, conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    """Eight departments' messages, a receiver that takes 1 s to answer: SIGKILL the notifier
    mid-send, restart it, and each message is delivered exactly once (the one cut off mid-
    request is sent again after its lease, with the same idempotency key)."""
    cfg = config(smtp, http, group_wait="0s")
    ctx = ctx_of(cfg)
    for i in range(8):  # eight messages to 区应急局's robot, planned one by one
        meta = AlertMeta(f"test.rule_{i}", "warning", "区应急局", {"domain": "test"})
        raise_alerts(conn, f"fl-{i}", meta=meta)
        assert plan(conn, ctx, datetime.now(UTC)) == 1
    http.delay_s = 1.0
    first = _notifier(tmp_path, db_url, cfg)
    try:
        deadline = time.monotonic() + 30
        while len(http.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # mid-request
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    got_before = len(http.requests)
    assert got_before > 0
    second = _notifier(tmp_path, db_url, cfg)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'sent'), count(*) FROM notifications"
            ).fetchone()
            conn.commit()
            if row and row[1] and row[0] == row[1]:
                break
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    keys = [r.headers["Idempotency-Key"] for r in http.at("yjj-robot")]
    planned = conn.execute("SELECT count(*) FROM notifications").fetchone()
    assert planned is not None and len(keys) == planned[0] > 1
    assert len(set(keys)) == len(keys)  # none twice
    assert second.returncode == 0


def test_the_daily_digest_has_the_kpis_the_alerts_of_the_day_and_a_chart(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    cfg = config(smtp, http, digest={"at": "08:30"})
    ctx = ctx_of(cfg)
    for entity, value in (("DMA-XLH", 30.5), ("DMA-SNH", 8.1), ("中心城区", 17.4)):
        conn.execute(
            "INSERT INTO kpi_values (kpi_id, entity, period, period_start, value, target, "
            "compliant) VALUES ('water.leakage_month', %s, 'month', '2026-11-01', %s, 10, %s)",
            (entity, value, value < 10),
        )
    raise_alerts(conn, "fl-a")  # 16:00 local on the 27th
    conn.execute("UPDATE notify_outbox SET processed_at = now()")  # not what this test is about
    conn.commit()
    morning = datetime(2026, 11, 28, 8, 29, tzinfo=TZ)
    assert run_once(conn, ctx, morning)["digests"] == 0  # not before 08:30
    got = run_once(conn, ctx, morning + timedelta(minutes=2))
    # 区住房城乡建委 (mail and robot) and 区应急局, to which ponding alerts are also routed
    assert got["digests"] == 3 and got["sent"] == 3
    assert "flood.ponding_15cm fl-a" in http.at("yjj-robot")[0].body["message"]
    assert run_once(conn, ctx, morning + timedelta(minutes=5))["digests"] == 0  # once a day
    [mail] = smtp.mails
    assert "每日简报" in mail.subject and "2026-11-27" in mail.subject
    text = mail.text
    assert "供水管网漏损率" in text and "DMA-XLH" in text and "NOT MET" in text
    assert "flood.ponding_15cm fl-a" in text
    images = [p for p in mail.message.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1
    png = images[0].get_payload(decode=True)
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    [robot] = http.at("zjw-robot")
    assert robot.body["attachments"] and "每日简报" in robot.body["title"]


def test_a_rule_may_have_its_own_escalation_delay_and_secrets_stay_out_of_errors() -> None:
    from notify.channels import redact
    from notify.config import load_config

    cfg = load_config()  # the packaged file
    assert cfg.escalation_after("critical", "air.heavy_pollution_warning") == 300
    assert cfg.escalation_after("warning", "parking.occupancy_85") is None
    assert cfg.escalation_after("critical", "flood.ponding_15cm") == 900
    url = "dingtalk://SEC0123456789abcdef@a1b2c3d4e5f6token/"
    said = "Failed to send DingTalk notification to a1b2c3d4e5f6token using SEC0123456789abcdef"
    assert "token" not in redact(said, url) and "SEC0123" not in redact(said, url)


def test_silences_and_notify_check_from_the_command_line(db_url: str) -> None:
    from tests.test_cli import cli

    env = {"URBANPULSE_DATABASE_URL": db_url, "URBANPULSE_TIMESCALEDB": "off"}
    out = cli(
        "silences", "add", "--match", "zone=DMA-XLH", "--match", "rule_id=water.*",
        "--for", "2h", "--author", "张伟", "--reason", "管网维修", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = cli("silences", "list", env=env)
    assert "zone=DMA-XLH, rule_id=water.*" in listed.stdout and "管网维修" in listed.stdout
    bad = cli("silences", "add", "--match", "colour=red", "--for", "1h", "--author", "a",
              "--reason", "b", env=env)  # fmt: skip
    assert bad.returncode != 0 and "unknown key" in bad.stderr
    assert cli("silences", "expire", "1", env=env).returncode == 0
    assert "管网维修" not in cli("silences", "list", env=env).stdout
    assert cli("silences", "expire", "1", env=env).returncode != 0  # already ended
    check = cli("notify", "check", env=env)
    assert check.returncode == 0 and "off (set URBANPULSE_NOTIFY_ZJW_DUTY)" in check.stdout


def test_an_alert_no_department_takes_is_kept_visible_not_dropped(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    traffic = AlertMeta("traffic.jam", "major", "区交通局", {"domain": "traffic"})
    raise_alerts(conn, "tr-1", meta=traffic)
    outbox_age(conn, 1)
    run_once(conn, ctx, at(0))
    row = conn.execute("SELECT state, last_error FROM notifications").fetchone()
    assert row == ("dead", "no department '区交通局' in the notify file: add it, or a route")


def test_a_slow_channel_holds_up_no_other(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    cfg = config(smtp, http)
    ops = cfg.departments["运维中心"].model_copy(
        update={"on_call": [cfg.departments["运维中心"].on_call[0].model_copy(
            update={"channels": ["slow", "ops-robot"]})]}
    )  # fmt: skip
    cfg = cfg.model_copy(update={"departments": {**cfg.departments, "运维中心": ops}})
    http.slow["/slow"] = 2.0
    offline = AlertMeta("device.offline", "warning", "运维中心", {"domain": "device"})
    raise_alerts(conn, "wn-a", meta=offline)
    outbox_age(conn, 1)
    ctx = ctx_of(cfg)
    plan(conn, ctx, at(0))
    assert deliver(conn, ctx, at(0)) == (2, 0)
    sent = dict(conn.execute("SELECT channel, sent_at FROM notifications").fetchall())
    assert (sent["slow"] - sent["ops-robot"]).total_seconds() > 1.5  # not queued behind it


def test_a_silence_that_ends_lets_the_alert_be_announced_and_escalated_from_then(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    ctx = ctx_of(config(smtp, http))
    add_silence(conn, {"entity": "fl-*"}, starts_at=at(-60), ends_at=at(10), author="张伟",
                reason="维护窗口")  # fmt: skip
    raise_alerts(conn, "fl-a", "fl-b")
    outbox_age(conn, 1)
    run_once(conn, ctx, at(0))
    assert smtp.mails == [] and http.requests == []
    assert escalate(conn, ctx, at(9)) == 0
    # fl-b resolves during the silence: never announced, so no resolution message either
    advance(conn, META, "fl-b", [Evaluation(at(5), Signal.CLEAR, 3.0)], Timing())
    outbox_age(conn, 1)
    run_once(conn, ctx, at(9))
    assert smtp.mails == []
    # the silence ends: fl-a (still firing, unacknowledged) is announced, and escalates 15
    # minutes after that, not after it began
    got = run_once(conn, ctx, at(11))
    assert got["planned"] == 3 and "fl-a" in smtp.mails[0].text
    assert "fl-b" not in smtp.mails[0].text
    assert escalate(conn, ctx, at(20)) == 0
    assert escalate(conn, ctx, at(27)) == 1


def test_departments_sharing_a_channel_each_get_their_message(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    cfg = config(smtp, http)
    shared = {"on_call": [{"channels": ["zjw-robot"]}]}
    cfg = NotifyConfig.model_validate(
        {**cfg.model_dump(mode="json"), "departments": {**cfg.model_dump(mode="json")[
            "departments"], "区应急局": shared}}
    )  # fmt: skip
    raise_alerts(conn, "fl-a")
    outbox_age(conn, 1)
    run_once(conn, ctx_of(cfg), at(0))
    titles = sorted(r.body["message"].splitlines()[1] for r in http.at("zjw-robot"))
    assert len(titles) == 2 and "区应急局" in titles[0] + titles[1]


def test_a_sender_bug_is_an_attempt_that_failed_not_a_dead_notifier(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    from notify.channels import DeliveryError, send
    from notify.config import Channel

    spec = config(smtp, http).model_dump(mode="json")
    spec["channels"]["ops-robot"] = {"type": "webhook", "url": "http://[not-an-address/x"}
    ctx = ctx_of(NotifyConfig.model_validate(spec))
    offline = AlertMeta("device.offline", "warning", "运维中心", {"domain": "device"})
    raise_alerts(conn, "wn-a", meta=offline)
    outbox_age(conn, 1)
    got = run_once(conn, ctx, at(0))
    assert got["failed"] >= 1
    state = conn.execute(
        "SELECT state, attempts, last_error FROM notifications WHERE channel = 'ops-robot'"
    ).fetchone()
    assert state is not None and state[:2] == ("pending", 1) and state[2]
    # a webhook's error names its host, never the user and password in its URL
    secret = Channel(type="webhook", url="http://sms:S3cretPassw0rd@127.0.0.1:9/send")
    with pytest.raises(DeliveryError) as err:
        send(secret, title="t", body="b", key="k")
    assert "S3cret" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_an_expired_claim_does_not_overwrite_another_notifiers_outcome(
    conn: Conn, smtp: SmtpReceiver, http: HttpReceiver
) -> None:
    from notify.deliver import _claim, _record

    ctx = ctx_of(config(smtp, http))
    offline = AlertMeta("device.offline", "warning", "运维中心", {"domain": "device"})
    raise_alerts(conn, "wn-a", meta=offline)
    outbox_age(conn, 1)
    plan(conn, ctx, at(0))
    mine = _claim(conn, ctx, at(0))
    assert {c.channel for c in mine} == {"ops-robot", "broken"}  # `unset` is off: dead at once
    # our lease ran out; another notifier claimed the message again and delivered it
    conn.execute("UPDATE notifications SET state = 'sent', claimed_until = NULL")
    conn.commit()
    late = mine[0]
    assert not _record(conn, ctx, late, error="timeout", took_ms=10.0, now=at(5))
    row = conn.execute("SELECT state FROM notifications WHERE id = %s", (late.id,)).fetchone()
    assert row == ("sent",)
