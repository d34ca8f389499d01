"""Integration: simulated devices → a real Mosquitto → ingest → real PostgreSQL.

Every test checks exact counts: each valid reading stored once, each bad message quarantined
once with its reason, nothing more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.pipeline import (
    InThreadIngest,
    publish,
    quarantined,
    settings_for,
    stored,
    wait_until,
)
from tests.services import Mosquitto, TcpProxy
from tests.streams import DEVICES, Stream, mixed_stream, steady_stream
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def provision(db_url: str, devices: list[DeviceSpec] = DEVICES) -> None:
    with psycopg.connect(db_url) as conn:
        upsert_devices(conn, devices)


def wait_for_stream(db_url: str, stream: Stream, timeout: float = 60.0) -> None:
    def done() -> bool:
        return len(stored(db_url)) >= len(stream.readings) and sum(
            quarantined(db_url).values()
        ) >= sum(stream.quarantine.values())

    wait_until(
        done,
        timeout,
        f"{len(stream.readings)} readings and {sum(stream.quarantine.values())} quarantined",
    )
    time.sleep(0.5)  # anything extra (a duplicate row, a stray quarantine) would show now


def ingest_process(settings: Settings, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        URBANPULSE_DATABASE_URL=settings.database_url,
        URBANPULSE_MQTT_URL=settings.mqtt_url,
        URBANPULSE_TOPIC_PREFIX=settings.topic_prefix,
        URBANPULSE_INGEST_GROUP=settings.ingest_group,
        URBANPULSE_INGEST_BATCH_DELAY_MS="50",
        URBANPULSE_INGEST_LOG_INTERVAL_S="2",
    )
    with log.open("ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "urbanpulse.cli", "ingest", *extra],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def wait_subscribed(log: Path, count: int = 1, timeout: float = 20.0) -> None:
    wait_until(
        lambda: log.read_text(errors="replace").count("subscribed to") >= count,
        timeout,
        f"ingest to subscribe ({log.read_text(errors='replace')[-2000:]})",
    )


@pytest.fixture
def provisioned(db_url: str) -> str:
    provision(db_url)
    return db_url


def test_mixed_stream_ends_stored_once_or_quarantined_with_reason(
    provisioned: str, broker: Mosquitto, prefix: str
) -> None:
    stream = mixed_stream(prefix)
    settings = settings_for(provisioned, broker.url, prefix)
    with InThreadIngest(settings):
        publish(broker.url, stream.messages)
        wait_for_stream(provisioned, stream)
    assert stored(provisioned) == stream.readings
    assert quarantined(provisioned) == stream.quarantine
    with psycopg.connect(provisioned) as conn:
        (raw,) = conn.execute(
            "SELECT payload FROM quarantine WHERE reason = 'bad_json' AND payload = %s",
            (b"\xff\xfe\xfd",),
        ).fetchone() or (None,)
        partial = conn.execute(
            "SELECT stored_readings, detail FROM quarantine WHERE reason = 'out_of_range'"
        ).fetchone()
    assert raw == b"\xff\xfe\xfd"  # the raw bytes are kept
    assert partial is not None and partial[0] == 1 and partial[1][0]["index"] == 1


def test_unknown_device_is_quarantined_then_replayed_after_provisioning(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    from urbanpulse.contract import Limits, default_registry
    from urbanpulse.db.replay import replay

    provision(db_url, DEVICES[:1])  # only aq1; wn1 arrives unknown
    stream = steady_stream(prefix, 30)
    with InThreadIngest(settings_for(db_url, broker.url, prefix)):
        publish(broker.url, stream.messages)
        wait_until(lambda: quarantined(db_url)["unknown_device"] == 30, 30, "quarantine")
    assert stored(db_url) == set()
    provision(db_url, DEVICES)
    result = replay(
        db_url,
        registry=default_registry(),
        prefix=prefix,
        limits=Limits.of(load_settings()),
    )
    assert (result.replayed, result.still_failing, result.readings_stored) == (30, 0, 90)
    assert stored(db_url) == stream.readings
    again = replay(
        db_url,
        registry=default_registry(),
        prefix=prefix,
        limits=Limits.of(load_settings()),
    )
    assert again.replayed == 0  # replayed messages are not replayed twice


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    provisioned: str, tmp_path: Path, prefix: str
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        settings = settings_for(provisioned, broker.url, prefix)
        log = tmp_path / "ingest.log"
        stream = steady_stream(prefix, 3000)
        proc = ingest_process(settings, log, "--client-id", "kill-test")
        wait_subscribed(log)
        publisher = threading.Thread(
            target=publish, args=(broker.url, stream.messages), kwargs={"rate": 1000.0}
        )
        publisher.start()
        wait_until(lambda: len(stored(provisioned)) > 1500, 30, "some readings stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = len(stored(provisioned))
        assert 0 < killed_at < len(stream.readings)
        publisher.join()
        proc = ingest_process(settings, log, "--client-id", "kill-test")
        try:
            wait_for_stream(provisioned, stream)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        assert stored(provisioned) == stream.readings
        assert quarantined(provisioned) == Counter()
    finally:
        broker.stop()


def test_database_connection_cut_mid_stream_loses_nothing(
    provisioned: str, broker: Mosquitto, prefix: str
) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(provisioned)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    via_proxy = provisioned.replace(f":{parts.port or 5432}/", f":{proxy.port}/", 1)
    stream = steady_stream(prefix, 2000)
    ingest = InThreadIngest(settings_for(via_proxy, broker.url, prefix))
    try:
        with ingest:
            publisher = threading.Thread(
                target=publish,
                args=(broker.url, stream.messages),
                kwargs={"rate": 800.0, "client_id": "cut"},
            )
            publisher.start()
            wait_until(lambda: len(stored(provisioned)) > 600, 30, "some readings stored")
            proxy.refuse(3.0)  # every connection dropped, new ones refused for 3 s
            time.sleep(3.5)
            publisher.join()
            wait_for_stream(provisioned, stream)
        assert stored(provisioned) == stream.readings
        assert quarantined(provisioned) == Counter()
    finally:
        proxy.close()


def test_sigterm_flushes_acknowledges_and_exits_zero(
    provisioned: str, broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(provisioned, broker.url, prefix)
    log = tmp_path / "ingest.log"
    proc = ingest_process(settings, log, "--client-id", f"term-{prefix[:8]}")
    wait_subscribed(log)
    stream = steady_stream(prefix, 500)
    publish(broker.url, stream.messages)
    wait_for_stream(provisioned, stream)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "ingest stopped: received=500 stored=1500" in text


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that only lets the account `ingest` / `right-secret` in."""
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "ingest", "right-secret"],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(tmp_path / "auth-broker", password_file=pwfile)
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("secret", ["wrong-secret", None])
def test_wrong_broker_credentials_exit_nonzero_with_a_clear_message(
    db_url: str, auth_broker: Mosquitto, prefix: str, tmp_path: Path, secret: str | None
) -> None:
    user = f"ingest:{secret}@" if secret else ""
    url = f"mqtt://{user}127.0.0.1:{auth_broker.port}"
    log = tmp_path / "ingest.log"
    proc = ingest_process(settings_for(db_url, url, prefix), log)
    assert proc.wait(timeout=30) == 3
    text = log.read_text()
    assert "bad user name or password" in text or "not authorized" in text
    assert "URBANPULSE_MQTT_URL" in text
    assert "wrong-secret" not in text  # secrets are never logged


def test_right_broker_credentials_are_accepted(
    provisioned: str, auth_broker: Mosquitto, prefix: str
) -> None:
    url = f"mqtt://ingest:right-secret@127.0.0.1:{auth_broker.port}"
    stream = steady_stream(prefix, 20)
    with InThreadIngest(settings_for(provisioned, url, prefix)):
        publish(url, stream.messages)
        wait_for_stream(provisioned, stream)
    assert stored(provisioned) == stream.readings


def test_wrong_database_role_exits_nonzero_with_a_clear_message(
    broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for("postgresql://no_such_role@127.0.0.1:5432/postgres", broker.url, prefix)
    log = tmp_path / "ingest.log"
    proc = ingest_process(settings, log)
    assert proc.wait(timeout=30) == 3
    assert "URBANPULSE_DATABASE_URL" in log.read_text()
