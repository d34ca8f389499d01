"""What a replay read, skipped, converted and published, and what ingest will make of it."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from simulators.replay.model import Entry, Message, Quirk

# What ingest does with each quirk that goes out as it is.
QUIRK_OUTCOME = {
    Quirk.OUT_OF_RANGE: "ingest quarantines it (out_of_range)",
    Quirk.NOT_A_NUMBER: "ingest quarantines it (bad_value)",
    Quirk.AT_CEILING: "stored: the true value is at least this",
    Quirk.ABOVE_BOUND: "stored as measured",
    Quirk.DUPLICATE: "ingest keeps one (unique device, metric, time)",
    Quirk.CONFLICT: "ingest keeps the first to arrive",
}
QUARANTINED = (Quirk.OUT_OF_RANGE, Quirk.NOT_A_NUMBER)
EXAMPLES_PER_REASON = 3


class _Keys:
    """Remembers (device, metric, time) of every published reading, packed into one int.

    It tells duplicates apart and predicts what ingest stores: the first valid reading of a
    key (ingest's unique key), whatever came before it and was refused.
    """

    def __init__(self) -> None:
        self.devices: dict[str, int] = {}
        self.metrics: dict[str, int] = {}
        self.seen: dict[int | tuple[int, int, int], float | str] = {}
        self.unstored: set[int | tuple[int, int, int]] = set()  # first occurrence was refused

    def check(
        self, device: str, metric: str, ts_ms: int, value: float | str, refused: bool
    ) -> tuple[Quirk | None, bool]:
        """(duplicate quirk or None, whether ingest stores this reading)."""
        d = self.devices.setdefault(device, len(self.devices))
        m = self.metrics.setdefault(metric, len(self.metrics))
        key = (ts_ms << 24) | (d << 6) | m if d < 2**18 and m < 2**6 else (d, m, ts_ms)
        if key not in self.seen:
            self.seen[key] = value
            if refused:
                self.unstored.add(key)
            return None, not refused
        quirk = Quirk.DUPLICATE if self.seen[key] == value else Quirk.CONFLICT
        if not refused and key in self.unstored:
            self.unstored.discard(key)
            return quirk, True
        return quirk, False


@dataclass
class Tally:
    """Counters of one replay; `to_json` and `render` present them."""

    mapping: str
    files: dict[str, int] = field(default_factory=dict)  # file -> rows read
    rows_skipped: Counter[str] = field(default_factory=Counter)
    values_skipped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, metric)
    filtered: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unmapped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # what was published
    messages: Counter[str] = field(default_factory=Counter)  # device -> messages
    readings: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    quirks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (quirk, metric)
    quarantine_expected: Counter[str] = field(default_factory=Counter)
    expected_stored: int = 0  # readings ingest should store
    first_ms: int | None = None
    last_ms: int | None = None
    _keys: _Keys = field(default_factory=_Keys, repr=False)
    _quarantined: set[tuple[str, tuple[Entry, ...]]] = field(default_factory=set, repr=False)

    @property
    def rows_read(self) -> int:
        return sum(self.files.values())

    def skip_row(self, reason: str, where: str) -> None:
        self.rows_skipped[reason] += 1
        self.example(reason, where)

    def example(self, reason: str, where: str) -> None:
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append(where)

    def published(self, msg: Message) -> None:
        """Count one message as it goes out (or would, in a dry run)."""
        self.messages[msg.device] += 1
        per_metric = self.readings[msg.device]
        quarantined: Quirk | None = None
        for e in msg.entries:
            per_metric[e.metric] += 1
            refused = False
            for q in e.quirks:
                self.quirks[(q, e.metric)] += 1
                if q in QUARANTINED:
                    refused = True
                    quarantined = quarantined or q
            dup, stored = self._keys.check(msg.device, e.metric, e.ts_ms, e.value, refused)
            if dup is not None:
                self.quirks[(dup, e.metric)] += 1
            self.expected_stored += stored
        # the same bytes again fold into the quarantine row of the first (occurrences + 1)
        if quarantined is not None and (msg.device, msg.entries) not in self._quarantined:
            self._quarantined.add((msg.device, msg.entries))
            self.quarantine_expected[str(quarantined)] += 1
        first = msg.entries[0].ts_ms
        self.first_ms = first if self.first_ms is None else min(self.first_ms, first)
        self.last_ms = msg.due_ms if self.last_ms is None else max(self.last_ms, msg.due_ms)

    # -- totals ------------------------------------------------------------------------------
    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    @property
    def total_readings(self) -> int:
        return sum(sum(c.values()) for c in self.readings.values())

    def per_metric(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.readings.values():
            out.update(c)
        return out

    def quirk_total(self, quirk: Quirk) -> int:
        return sum(n for (q, _), n in self.quirks.items() if q == quirk)

    def to_json(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping,
            "files": dict(self.files),
            "rows_read": self.rows_read,
            "rows_skipped": dict(self.rows_skipped),
            "values_skipped": _nested(self.values_skipped),
            "filtered": dict(self.filtered),
            "converted": dict(self.converted),
            "unmapped_columns": self.unmapped,
            "messages": self.total_messages,
            "readings": self.total_readings,
            "first_measurement": _utc(self.first_ms) if self.first_ms is not None else None,
            "last_measurement": _utc(self.last_ms) if self.last_ms is not None else None,
            "devices": {
                d: {"messages": self.messages[d], "readings": dict(self.readings[d])}
                for d in sorted(self.messages)
            },
            "readings_per_metric": dict(self.per_metric()),
            "quirks_published": _nested(self.quirks),
            "expected": {
                "readings_stored": self.expected_stored,
                "messages_quarantined": dict(self.quarantine_expected),
            },
            "examples": {k: v for k, v in self.examples.items() if v},
            "notes": self.notes,
        }


def _utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts dma-2 before dma-10."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p)


def _nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (a, b), n in sorted(counter.items()):
        out[str(a)][b] = n
    return dict(out)


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def render(tally: Tally, *, dry_run: bool, max_devices: int = 40) -> str:
    """The summary a person reads at the end of `urbanpulse replay`."""
    lines: list[str] = []
    lines.append(
        f"read {tally.rows_read} rows from {len(tally.files)} file(s): "
        + ", ".join(f"{f} ({n})" for f, n in tally.files.items())
    )
    for f, cols in tally.unmapped.items():
        lines.append(f"  columns not replayed in {f}: {', '.join(cols)}")
    if tally.filtered:
        lines.append(
            "not selected: " + ", ".join(f"{n} {what}" for what, n in tally.filtered.items())
        )
    verb = "would publish" if dry_run else "published"
    span = ""
    if tally.first_ms is not None and tally.last_ms is not None:
        span = f", measured {_utc(tally.first_ms)} .. {_utc(tally.last_ms)}"
    lines.append(
        f"{verb} {tally.total_messages} messages with {tally.total_readings} readings "
        f"for {len(tally.messages)} devices{span}"
    )
    metrics = sorted(tally.per_metric())
    if tally.messages:
        rows: list[tuple[str, ...]] = [("device", "messages", *metrics)]
        devices = sorted(tally.messages, key=natural)
        for d in devices[:max_devices]:
            counts = tally.readings[d]
            cells = (str(counts[m]) if m in counts else "-" for m in metrics)
            rows.append((d, str(tally.messages[d]), *cells))
        total = tally.per_metric()
        rows.append(("total", str(tally.total_messages), *(str(total[m]) for m in metrics)))
        lines += _table(rows)
        if len(devices) > max_devices:
            lines.append(f"  … and {len(devices) - max_devices} more devices (--json lists all)")
    if tally.rows_skipped:
        lines.append("rows skipped:")
        for reason, n in tally.rows_skipped.most_common():
            lines.append(f"  {reason}: {n}  e.g. {'; '.join(tally.examples[reason])}")
    if tally.values_skipped:
        lines.append("values skipped:")
        for (reason, metric), n in sorted(tally.values_skipped.items()):
            lines.append(f"  {metric} {reason}: {n}")
    if tally.converted:
        lines.append("converted:")
        for what, n in tally.converted.items():
            lines.append(f"  {what}: {n}  e.g. {'; '.join(tally.examples[what])}")
    if tally.quirks:
        lines.append("published as they are:")
        for (quirk, metric), n in sorted(tally.quirks.items()):
            examples = tally.examples.get(f"{quirk}:{metric}") or []
            eg = f"  e.g. {'; '.join(examples)}" if examples else ""
            lines.append(f"  {metric} {quirk}: {n} — {QUIRK_OUTCOME[Quirk(quirk)]}{eg}")
    quarantined = sum(tally.quarantine_expected.values())
    lines.append(
        f"expected at ingest: {tally.expected_stored} readings stored, "
        f"{quarantined} messages quarantined"
        + (
            " (" + ", ".join(f"{r}: {n}" for r, n in tally.quarantine_expected.items()) + ")"
            if quarantined
            else ""
        )
    )
    lines += [f"note: {n}" for n in tally.notes]
    return "\n".join(lines)
