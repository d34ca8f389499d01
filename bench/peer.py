"""The peer of the ingest benchmark: Node-RED running the flow users typically build to put
MQTT readings into PostgreSQL — MQTT in (QoS 1, JSON) → a function that turns the message into
rows → an INSERT through node-postgres (`pg`), one statement per message, duplicates ignored.

Node-RED and `pg` come from the npm registry into `build/node-red/` on first use (about 10 s);
the flow writes to a database of its own, migrated as ours is (the same `readings` table, the
same key), on the same server, from the same broker and publishers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from urbanpulse.broker import parse_broker_url
from urbanpulse.serve import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "build" / "node-red"
PACKAGES = ("node-red@4", "pg@8")

# The function node: one INSERT per message, as a flow built in the editor does.
FUNCTION = """
const pool = context.get('pool');
const device = msg.topic.split('/').pop();
const body = msg.payload;
let rows = [];
if (Array.isArray(body.readings)) {
    rows = body.readings.map(r => [device, r.metric, r.ts, r.value]);
} else if (body.values) {
    rows = Object.entries(body.values).map(([k, v]) => [device, k, body.ts, v]);
} else {
    rows = [[device, body.metric, body.ts, body.value]];
}
const params = [];
const tuples = rows.map((r, i) => {
    params.push(r[0], r[1], new Date(r[2]), r[3]);
    return `($${4 * i + 1}, $${4 * i + 2}, $${4 * i + 3}, $${4 * i + 4})`;
});
await pool.query(
    'INSERT INTO readings (device_id, metric, ts, value) VALUES ' + tuples.join(',') +
    ' ON CONFLICT DO NOTHING', params);
return null;
"""

SETUP = """
const pg = global.get('pg');
context.set('pool', new pg.Pool({connectionString: env.get('PEER_DATABASE_URL'), max: 8}));
"""

CLOSE = """
const pool = context.get('pool');
if (pool) { pool.end(); }
"""


def available() -> str | None:
    """Why the peer cannot run here, or None."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "Node.js and npm are not installed"
    return None


def install(say: Callable[[str], None] = print) -> Path:
    """Node-RED and pg in build/node-red (once)."""
    if not (INSTALL / "node_modules" / "node-red" / "red.js").exists():
        INSTALL.mkdir(parents=True, exist_ok=True)
        say(f"    installing {' '.join(PACKAGES)} from npm into {INSTALL}")
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
            cwd=INSTALL,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return INSTALL


def flows(mqtt_url: str, topic: str) -> list[dict[str, object]]:
    broker = parse_broker_url(mqtt_url)
    return [
        {"id": "tab", "type": "tab", "label": "readings"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "broker": broker.host,
            "port": str(broker.port),
            "clientid": f"node-red-peer-{os.getpid()}",
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoConnect": True,
            "usetls": False,
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "tab",
            "topic": topic,
            "qos": "1",
            "datatype": "json",
            "broker": "broker",
            "wires": [["store"]],
        },
        {
            "id": "store",
            "type": "function",
            "z": "tab",
            "func": FUNCTION,
            "initialize": SETUP,
            "finalize": CLOSE,
            "outputs": 0,
            "wires": [],
        },
    ]


SETTINGS = """
module.exports = {
    flowFile: 'flows.json',
    uiPort: %(port)d,
    uiHost: '127.0.0.1',
    disableEditor: true,
    httpAdminRoot: false,
    credentialSecret: false,
    functionGlobalContext: { pg: require('%(pg)s') },
    logging: { console: { level: 'info', metrics: false, audit: false } },
};
"""


class NodeRed:
    """A Node-RED process running the flow, until stopped."""

    def __init__(self, workdir: Path, mqtt_url: str, db_url: str, topic: str) -> None:
        base = install()
        self.dir = workdir / "node-red"
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        (self.dir / "flows.json").write_text(json.dumps(flows(mqtt_url, topic), indent=1))
        pg = base / "node_modules" / "pg"
        (self.dir / "settings.js").write_text(SETTINGS % {"port": port, "pg": pg})
        self.log = self.dir / "node-red.log"
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [
                    "node",
                    str(base / "node_modules" / "node-red" / "red.js"),
                    "--settings",
                    str(self.dir / "settings.js"),
                    "--userDir",
                    str(self.dir),
                ],
                env=dict(os.environ, PEER_DATABASE_URL=db_url),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "Connected to broker" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Node-RED did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(1.0)  # the subscription follows the connection
        if "[error]" in self.log.read_text(errors="replace"):
            self.stop()
            raise RuntimeError(f"Node-RED's flow failed:\n{self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, 20)
