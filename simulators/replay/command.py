"""`urbanpulse replay`: options as a person types them, the listing, and the printed summary."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from simulators.replay.errors import DatasetError
from simulators.replay.mapping import load_mapping, packaged_names
from simulators.replay.plan import Selection, source_files
from simulators.replay.run import ReplayOptions, describe, run_replay
from urbanpulse.contract.registry import default_registry
from urbanpulse.errors import UrbanPulseError
from urbanpulse.settings import Settings

EXIT_INTERRUPTED = 130


def default_data_dir(settings: Settings) -> Path:
    """URBANPULSE_DATASETS, else `../shared/datasets` beside the project."""
    if settings.datasets is not None:
        return settings.datasets
    root = Path(__file__).resolve().parents[2]
    return (root.parent / "shared" / "datasets").resolve()


def parse_bound(text: str | None, option: str) -> datetime | None:
    """A date or date-time; without an offset it is local time of the dataset."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UrbanPulseError(
            f"{option} {text!r}: expected a date or date-time such as 2016-07-19 "
            "or 2016-07-19T08:00 (local time of the dataset), or with an offset (+08:00)"
        ) from None


def parse_speed(text: str) -> float | None:
    if text.lower() in {"max", "0"}:
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if speed <= 0:
        raise UrbanPulseError(f"--speed {text!r}: a positive factor such as 3600, or max")
    return speed


def list_mappings(data_dir: Path, out: TextIO) -> int:
    registry = default_registry()
    rows = [("mapping", "dataset folder", "files", "licence", "title")]
    for name in packaged_names():
        m = load_mapping(name, registry)
        folder = data_dir / m.spec.folder
        try:
            found = sum(len(source_files(folder, s)) for s in m.spec.sources)
            files = str(found)
        except DatasetError:
            files = "missing"
        rows.append((name, m.spec.folder, files, m.spec.attribution.licence, m.spec.title))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4], file=out)
    print(f"datasets directory: {data_dir}", file=out)
    print("a mapping YAML file of your own works too: urbanpulse replay my-mapping.yaml", file=out)
    return 0


def replay_command(
    settings: Settings,
    *,
    mapping: str | None,
    list_only: bool,
    data_dir: Path | None,
    since: str | None,
    until: str | None,
    devices: Sequence[str],
    limit: int | None,
    speed: str,
    shift_to_now: bool,
    max_gap: float | None,
    dry_run: bool,
    provision: bool,
    as_json: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    folder_root = data_dir or default_data_dir(settings)
    if list_only:
        return list_mappings(folder_root, out)
    if not mapping:
        raise UrbanPulseError(
            f"name a mapping ({', '.join(packaged_names())}) or a mapping file; --list shows them"
        )
    registry = default_registry()
    loaded = load_mapping(mapping, registry)
    if limit is not None and limit < 0:
        raise UrbanPulseError("--limit must be 0 or more")
    options = ReplayOptions(
        selection=Selection(
            since=parse_bound(since, "--since"),
            until=parse_bound(until, "--until"),
            devices=tuple(d for d in devices if d),
            limit=limit,
        ),
        speed=parse_speed(speed),
        shift_to_now=shift_to_now,
        dry_run=dry_run,
        provision=provision,
        max_gap_s=max_gap,
    )
    stop = threading.Event()
    result = run_replay(
        loaded, folder_root / loaded.spec.folder, options, settings, registry, stop=stop, err=err
    )
    if as_json:
        doc = result.plan.tally.to_json()
        doc.update(
            dry_run=dry_run,
            published_messages=result.published,
            shift_ms=result.shift_ms,
            interrupted=result.interrupted,
            elapsed_s=round(result.elapsed_s, 3),
        )
        print(json.dumps(doc, ensure_ascii=False, indent=2), file=out)
    else:
        print(describe(result, options, settings), file=out)
    return EXIT_INTERRUPTED if result.interrupted else 0
