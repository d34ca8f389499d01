"""The Grafana dashboards, generated from the rule files (grafana.py), and their provisioning
into a running Grafana (provision.py)."""
