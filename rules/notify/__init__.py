"""Alert delivery to the managers of the department that owns each target (the plan's 牵头单位).

config.py: the strict notify file (channels, departments with escalation levels, routes).
core.py: pure decisions: routing, silences, grouping, messages, escalation.
channels.py: apprise and JSON webhook senders.
service.py: the notifier: outbox → notifications → deliveries, escalation, digests.
"""
