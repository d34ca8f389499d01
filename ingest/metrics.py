"""Prometheus counters of an ingest worker, and the periodic log line built from them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from urbanpulse.contract.model import Reason


class IngestMetrics:
    """Counters on a registry of their own, so several workers (or tests) never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "urbanpulse_ingest_messages_received",
            "MQTT messages received (redeliveries included)",
            registry=r,
        )
        self.stored = Counter(
            "urbanpulse_ingest_readings_stored", "Readings newly stored", registry=r
        )
        self.duplicates = Counter(
            "urbanpulse_ingest_readings_duplicate",
            "Readings already stored (redelivery or resend), absorbed",
            registry=r,
        )
        self.quarantined = Counter(
            "urbanpulse_ingest_messages_quarantined",
            "Messages quarantined, by first reason",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "urbanpulse_ingest_batch_seconds",
            "Time to store and commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.db_errors = Counter(
            "urbanpulse_ingest_db_errors",
            "Failed attempts to store a batch (outages, restarts)",
            registry=r,
        )
        self.backlog = Gauge(
            "urbanpulse_ingest_unacked_messages",
            "Messages received and not yet acknowledged",
            registry=r,
        )
        self.last_store = Gauge(
            "urbanpulse_ingest_last_store_timestamp_seconds",
            "When a batch was last committed (Unix time): with unacknowledged messages, a value "
            "that stops moving means the database is stalled",
            registry=r,
        )
        self.db_up = Gauge(
            "urbanpulse_ingest_database_up", "1 when the last store succeeded", registry=r
        )
        self.broker_stored = Gauge(
            "urbanpulse_broker_stored_messages",
            "Messages the broker holds (queued for sessions, in flight, retained), as it "
            "reports in $SYS/broker/store/messages/count; -1 until it has said",
            registry=r,
        )
        self.broker_stored.set(-1)
        self.mqtt_up = Gauge(
            "urbanpulse_ingest_broker_connected", "1 while connected to the broker", registry=r
        )
        for reason in Reason:  # every reason visible at 0 from the start
            self.quarantined.labels(reason=reason.value)

    def snapshot(self) -> dict[str, float]:
        """Current values by short name (for the log line and for tests)."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    name = sample.name.removeprefix("urbanpulse_ingest_").removesuffix("_total")
                    if "reason" in sample.labels:
                        name = f"quarantined.{sample.labels['reason']}"
                    out[name] = sample.value
        return out

    def backlog_value(self) -> float:
        return self.registry.get_sample_value("urbanpulse_ingest_unacked_messages") or 0.0

    def log_line(self) -> str:
        snap = self.snapshot()
        stored = self.broker_stored_value()
        reasons = ", ".join(
            f"{k.split('.', 1)[1]}={int(v)}"
            for k, v in sorted(snap.items())
            if k.startswith("quarantined.") and v
        )
        return (
            f"received={int(snap.get('messages_received', 0))} "
            f"stored={int(snap.get('readings_stored', 0))} "
            f"duplicates={int(snap.get('readings_duplicate', 0))} "
            f"quarantined={int(sum(v for k, v in snap.items() if k.startswith('quarantined.')))}"
            f"{' (' + reasons + ')' if reasons else ''} "
            f"db_errors={int(snap.get('db_errors', 0))} "
            f"unacked={int(self.backlog_value())}"
            + (f" broker_stored={int(stored)}" if stored >= 0 else "")
        )

    def broker_stored_value(self) -> float:
        value = self.registry.get_sample_value("urbanpulse_broker_stored_messages")
        return -1.0 if value is None else value
