"""Horizontal ingest: three `urbanpulse ingest` processes share one stream through an MQTT 5
shared subscription on a real Mosquitto. The load is split across them; one is killed for good
mid-stream and the others take its share, draining what its session held: every reading stored
exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.pipeline import publish, quarantined, settings_for, stored, wait_until
from tests.services import Mosquitto
from tests.streams import Stream, steady_stream
from tests.test_ingest import ingest_process, provision, wait_for_stream, wait_subscribed
from urbanpulse.serve import free_port

pytestmark = pytest.mark.slow


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def union(*streams: Stream) -> Stream:
    out = Stream(streams[0].prefix)
    for st in streams:
        out.messages += st.messages
        out.readings |= st.readings
    return out


def received(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    m = re.search(r"^urbanpulse_ingest_messages_received_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_three_workers_split_the_load_and_survivors_take_a_dead_workers_share(
    db_url: str, tmp_path: Path, prefix: str
) -> None:
    provision(db_url)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        settings = settings_for(db_url, broker.url, prefix)
        ports = [free_port() for _ in range(3)]
        logs = [tmp_path / f"ingest-{k}.log" for k in range(3)]
        os.environ["URBANPULSE_INGEST_ADOPT_AFTER_S"] = "2"  # read by the children below
        try:
            for k in range(3):
                os.environ["URBANPULSE_METRICS_PORT"] = str(ports[k])
                procs.append(ingest_process(settings, logs[k], "--client-id", f"w{k}-{prefix[:6]}"))
        finally:
            os.environ.pop("URBANPULSE_INGEST_ADOPT_AFTER_S")
            os.environ.pop("URBANPULSE_METRICS_PORT")
        for log in logs:
            wait_subscribed(log)

        # 1. the load is split across the three
        first = steady_stream(prefix, 900, start=T0)
        publish(broker.url, first.messages, rate=600.0, client_id="first")
        wait_for_stream(db_url, first)
        split = [received(p) for p in ports]
        assert sum(split) >= 900 and all(n >= 150 for n in split), split

        # 2. worker 1 dies for good mid-stream; nothing restarts it
        rest = steady_stream(prefix, 1800, start=T0 + timedelta(seconds=900))
        publisher = threading.Thread(
            target=publish,
            args=(broker.url, rest.messages),
            kwargs={"rate": 300.0, "client_id": "rest"},
        )
        publisher.start()
        time.sleep(1.5)
        doomed = received(ports[1])  # what it had taken just before it dies
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        publisher.join()
        wait_for_stream(db_url, union(first, rest), timeout=90)

        # its queued share was drained by a peer, and the live two took the rest
        def drained() -> bool:
            texts = (log.read_text(errors="replace") for log in (logs[0], logs[2]))
            return any(f"drained the session of w1-{prefix[:6]}" in t for t in texts)

        wait_until(drained, 30, "a peer to drain the dead worker's session")
        # the survivors took everything but what the dead one had stored and acknowledged (the
        # rest of what it held came back to them); a few more may have gone between the reading
        # of its count and the kill, at 300/s
        after = [received(ports[k]) for k in (0, 2)]
        assert sum(after) >= 900 + 1800 - doomed - 30, (doomed, after)
        assert stored(db_url) == union(first, rest).readings  # each exactly once
        assert quarantined(db_url) == Counter()

        # 3. after the adoption, new messages all go to the live workers
        last = steady_stream(prefix, 300, start=T0 + timedelta(seconds=2700))
        mark = [received(ports[k]) for k in (0, 2)]
        publish(broker.url, last.messages, rate=600.0, client_id="last")
        everything = union(first, rest, last)
        wait_for_stream(db_url, everything)
        assert sum(received(ports[k]) for k in (0, 2)) - sum(mark) == 300
        assert stored(db_url) == everything.readings
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        broker.stop()
