"""Alerts: the lifecycle as a pure state machine (lifecycle.py) and its one writer (store.py),
shared by the rule runner and the API."""
