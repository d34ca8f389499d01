"""`urbanpulse simulate`: publish the fleet's readings in real time for a bounded duration."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from simulators.feed import Feed, fleet
from simulators.publisher import Publisher
from urbanpulse.broker import parse_broker_url
from urbanpulse.settings import Settings

log = logging.getLogger(__name__)


def simulate(
    settings: Settings,
    *,
    duration: float,
    interval: float,
    speed: float,
    seed: int,
    faults: bool,
    stop: threading.Event | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> int:
    """Publish rounds of readings every `interval` s; returns the number of messages sent."""
    stop = stop or threading.Event()
    feed = Feed(fleet(), prefix=settings.topic_prefix, seed=seed, speed=speed)
    broker = parse_broker_url(settings.mqtt_url)
    started = time.monotonic()
    rounds = 0
    with Publisher(broker, client_id=f"urbanpulse-sim-{os.getpid()}") as pub:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            now = datetime.now(UTC)
            for topic, payload in feed.messages(now, elapsed, interval):
                pub.publish(topic, payload)
            if faults and rounds % 10 == 5:
                for topic, payload in feed.faults(now):
                    pub.publish(topic, payload)
            rounds += 1
            if on_round:
                on_round(rounds, pub.published)
            stop.wait(max(0.0, started + rounds * interval - time.monotonic()))
    return pub.published


def run_simulation(
    settings: Settings, *, duration: float, interval: float, speed: float, seed: int, faults: bool
) -> int:
    stop = threading.Event()
    try:
        sent = simulate(
            settings,
            duration=duration,
            interval=interval,
            speed=speed,
            seed=seed,
            faults=faults,
            stop=stop,
        )
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(f"published {sent} messages to {parse_broker_url(settings.mqtt_url)}")
    return 0
