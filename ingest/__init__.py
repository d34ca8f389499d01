"""Ingest: MQTT messages in, validated readings and quarantine rows out, acked after commit."""
