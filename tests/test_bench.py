"""The ingest benchmark's harness, short: every shape, the two ceilings, the Node-RED peer, a
sweep point and the plot, from the real command (`python -m bench ingest`). Only that it
measures, and that nothing was lost: no timing is asserted here (figures come from
`make bench` on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_ingest_benchmark_measures_every_shape_beside_its_ceilings(tmp_path: Path) -> None:
    out, plot = tmp_path / "bench.json", tmp_path / "bench.svg"
    done = subprocess.run(  # noqa: PLW1510 - the test reads the return code
        [sys.executable, "-m", "bench", "ingest",
        "--shape", "3", "1", "100", "--seconds", "3", "--warmup", "1",
        "--ceiling-seconds", "1", "--devices", "200", "--publishers", "1", "--rate", "2000",
        "--sweep", "300", "--alert-wait", "0", "--json", str(out), "--plot", str(plot)],
        cwd=ROOT, text=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["shapes"]) == {"3", "1", "100"}
    for name, entry in result["shapes"].items():
        shape = int(name)
        product = entry["product"]
        assert product["published_messages"] > 0
        assert product["published_readings"] == product["published_messages"] * shape
        assert product["stored_readings"] == product["published_readings"], name
        assert entry["broker"]["received"] == entry["broker"]["messages"] > 0
        assert entry["copy"]["readings_per_s"] > 0 and entry["broker"]["msg_per_s"] > 0
        assert entry["ratios"]["of_broker_ceiling"] >= 0
        assert set(product["latency_ms"]) == {"p50", "p95", "p99"}
        assert {"ingest-0", "ingest-1", "rules", "mosquitto", "postgres", "publishers"} <= set(
            product["usage"]
        )
    [point] = result["sweep"]
    assert (
        point["offered"].startswith("300")
        and point["stored_readings"] == point["published_readings"]
    )
    assert plot.read_text().startswith("<svg") and "offered load" in plot.read_text()
    # the peer ran on the first shape (Node-RED from npm), or says why not
    peer = result["peer"]
    if "skipped" not in peer:
        assert peer["published_readings"] > 0 and peer["stored_readings"] > 0
        assert peer["ours_over_peer"] > 0 and "node-red" in peer["usage"]
    assert "| shape | msg/s in the window |" in done.stdout  # the table
