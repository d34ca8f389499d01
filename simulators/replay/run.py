"""The shell of `urbanpulse replay`: provision the devices, pace and publish, show progress."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg

from simulators.publisher import Publisher
from simulators.replay.mapping import Mapping
from simulators.replay.model import Entry, Message
from simulators.replay.plan import Plan, Selection, build_plan, shift_to_now
from simulators.replay.report import render
from urbanpulse.broker import BrokerAddress, parse_broker_url
from urbanpulse.contract.registry import Registry
from urbanpulse.db.connect import connect, where
from urbanpulse.db.devices import upsert_devices
from urbanpulse.errors import ConfigError, UrbanPulseError
from urbanpulse.settings import Settings

PROGRESS_EVERY_S = 5.0  # a progress line on stderr this often, during long replays


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    selection: Selection = field(default_factory=Selection)
    speed: float | None = None  # measurement seconds per real second; None: as fast as possible
    shift_to_now: bool = False
    dry_run: bool = False
    provision: bool = True
    max_gap_s: float | None = None  # never wait longer than this between two messages
    progress_every_s: float = PROGRESS_EVERY_S


@dataclass
class ReplayResult:
    plan: Plan
    published: int = 0
    shift_ms: int = 0
    provisioned: tuple[int, int] | None = None  # (created, updated)
    interrupted: bool = False
    elapsed_s: float = 0.0
    publishing_s: float = 0.0  # from the first publish to the last (pacing included)
    notes: list[str] = field(default_factory=list)


def _iso(ts_ms: int, msg: Message) -> str:
    """RFC 3339 with the source's local offset, so a reader sees the wall-clock time too."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=msg.zone)
    return moment.isoformat(timespec="milliseconds" if ts_ms % 1000 else "seconds")


def _reading(e: Entry) -> dict[str, Any]:
    return {"value": e.value, "unit": e.unit}


def payload(msg: Message, shift_ms: int = 0) -> bytes:
    """The JSON a device would send: several metrics at one time, or a batch of readings."""
    if msg.batch:
        body: dict[str, Any] = {
            "readings": [
                {"metric": e.metric, **_reading(e), "ts": _iso(e.ts_ms + shift_ms, msg)}
                for e in msg.entries
            ]
        }
    else:
        body = {
            "ts": _iso(msg.entries[0].ts_ms + shift_ms, msg),
            "values": {e.metric: _reading(e) for e in msg.entries},
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def provision(settings: Settings, plan: Plan) -> tuple[int, int]:
    """Create or update the devices the replay publishes for; ingest refuses unknown ones."""
    try:
        with connect(settings.database_url) as conn:
            result = upsert_devices(conn, list(plan.devices.values()))
    except psycopg.errors.UndefinedTable as exc:
        raise UrbanPulseError(
            f"database {where(settings.database_url)} has no devices table; "
            "run `urbanpulse db migrate` first"
        ) from exc
    return result.created, result.updated


class _Progress:
    """A line on stderr every few seconds: how far, which data time, how fast."""

    def __init__(self, total: int, every_s: float, out: TextIO) -> None:
        self.total = total
        self.every_s = every_s
        self.out = out
        self.started = time.monotonic()
        self.last = self.started

    def maybe(self, done: int, data_ms: int, shift_ms: int, waiting: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        moment = datetime.fromtimestamp((data_ms + shift_ms) / 1000, tz=UTC)
        state = "waiting for" if waiting else "at"
        print(
            f"  … {done}/{self.total} messages ({100 * done / max(self.total, 1):.0f} %), "
            f"{state} {moment:%Y-%m-%d %H:%M}Z, {rate:.0f} msg/s",
            file=self.out,
            flush=True,
        )


def publish_plan(
    plan: Plan,
    settings: Settings,
    options: ReplayOptions,
    result: ReplayResult,
    *,
    stop: threading.Event,
    err: TextIO,
) -> None:
    """Publish the plan's messages in order, paced by measurement time when a speed is set."""
    broker = parse_broker_url(settings.mqtt_url)
    prefix = settings.topic_prefix
    messages = plan.messages
    progress = _Progress(len(messages), options.progress_every_s, err)
    publisher = _connect(broker)
    failure: Exception | None = None
    try:
        started = time.monotonic()
        base_ms = messages[0].due_ms if messages else 0
        skipped_s = 0.0  # real time not waited because of --max-gap
        for msg in messages:
            if options.speed:
                target = started + (msg.due_ms - base_ms) / 1000 / options.speed - skipped_s
                ahead = target - time.monotonic()
                if options.max_gap_s is not None and ahead > options.max_gap_s:
                    skipped_s += ahead - options.max_gap_s
                    target -= ahead - options.max_gap_s
                while not stop.is_set() and (wait := target - time.monotonic()) > 0:
                    publisher.idle(min(wait, 0.5))  # serves acknowledgements while waiting
                    progress.maybe(result.published, msg.due_ms, result.shift_ms, waiting=True)
            if stop.is_set():
                result.interrupted = True
                break
            publisher.publish(f"{prefix}/{msg.domain}/{msg.device}", payload(msg, result.shift_ms))
            plan.tally.published(msg)
            result.published += 1
            progress.maybe(result.published, msg.due_ms, result.shift_ms)
        result.publishing_s = time.monotonic() - started
    except KeyboardInterrupt:
        result.interrupted = True
    except (TimeoutError, RuntimeError, ValueError) as exc:  # paho: not acknowledged, not sent
        failure = exc
    if failure is None:
        try:
            publisher.__exit__(None, None, None)  # waits until the broker has every message
        except TimeoutError as exc:
            failure = exc
    else:
        publisher.client.disconnect()
    if failure is not None:
        raise UrbanPulseError(
            f"publishing to {broker} failed after {result.published} messages ({failure}); "
            "check the broker and URBANPULSE_MQTT_URL"
        ) from failure


def _connect(broker: BrokerAddress) -> Publisher:
    """A connected publisher; a broker that is unreachable or refuses us is a clear error."""
    publisher = Publisher(broker, client_id=f"urbanpulse-replay-{os.getpid()}")
    try:
        publisher.__enter__()
    except ConfigError as exc:
        raise UrbanPulseError(f"{exc} — check URBANPULSE_MQTT_URL") from exc
    return publisher


def run_replay(
    mapping: Mapping,
    folder: Path,
    options: ReplayOptions,
    settings: Settings,
    registry: Registry,
    *,
    stop: threading.Event | None = None,
    err: TextIO = sys.stderr,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReplayResult:
    """Read, convert, provision and publish one dataset; returns what happened."""
    started = time.monotonic()
    plan = build_plan(
        mapping,
        folder,
        options.selection,
        registry,
        progress=lambda text: print(f"  {text}", file=err, flush=True),
    )
    result = ReplayResult(plan)
    if options.shift_to_now:
        result.shift_ms = shift_to_now(plan.messages, now())
    if options.dry_run:
        for msg in plan.messages:
            plan.tally.published(msg)
    else:
        if options.provision and plan.devices:
            result.provisioned = provision(settings, plan)
        publish_plan(plan, settings, options, result, stop=stop or threading.Event(), err=err)
    result.elapsed_s = time.monotonic() - started
    return result


def describe(result: ReplayResult, options: ReplayOptions, settings: Settings) -> str:
    """The whole summary printed at the end."""
    plan = result.plan
    spec = plan.mapping.spec
    sel = options.selection
    lines = [f"replay {spec.name}: {spec.title}", f"  data: {plan.folder}"]
    window = []
    if sel.since or sel.until:
        naive = any(b is not None and b.tzinfo is None for b in (sel.since, sel.until))
        window.append(
            f"window [{sel.since.isoformat() if sel.since else '…'}, "
            f"{sel.until.isoformat() if sel.until else '…'})"
            + (" in the dataset's local time" if naive else "")
        )
    if sel.devices:
        window.append(f"devices {', '.join(sel.devices)}")
    if sel.limit is not None:
        window.append(f"limit {sel.limit}")
    if window:
        lines.append("  " + "; ".join(window))
    if not options.dry_run:
        speed = f"{options.speed:g}× real time" if options.speed else "as fast as possible"
        lines.append(
            f"  to {parse_broker_url(settings.mqtt_url)} under {settings.topic_prefix}/…, {speed}"
        )
    if result.shift_ms:
        lines.append(f"  times shifted by {result.shift_ms / 86_400_000:.3f} days to end now")
    if result.provisioned is not None:
        created, updated = result.provisioned
        lines.append(
            f"  provisioned {created + updated} devices ({created} new, {updated} updated)"
        )
    lines.append(render(plan.tally, dry_run=options.dry_run))
    if result.interrupted:
        lines.append(f"interrupted: {result.published} of {len(plan.messages)} messages published")
    lines.append(f"done in {result.elapsed_s:.1f} s" + (" (dry run)" if options.dry_run else ""))
    return "\n".join(lines)
