"""The notifier: alert delivery to the managers of the department that owns each target (the
plan's 牵头单位), a service of its own (`urbanpulse notify`).

config.py: the strict notify file (channels, departments with escalation levels, routes).
core.py: pure decisions: routing, silences, grouping, messages, backoff.
context.py: what the stages share: the context, alerts and silences read, notifications written.
plan.py → escalate.py → deliver.py: the stages, each its own short transaction.
digest.py: each department's daily digest (KPIs, the day's alerts, a chart).
silences.py: silences and maintenance windows. channels.py: apprise and JSON webhook senders.
service.py: one pass over the stages, and the loop.
"""
