"""`urbanpulse replay`: real public datasets replayed through MQTT as if devices sent them.

mapping.py (strict YAML mappings) → readers.py (rows with line numbers) → cells.py and
localtime.py (values, times, DST) → plan.py (rows to messages, every skip counted) → run.py
(provision, pace, publish) → report.py (the summary); command.py is the CLI's side.
"""
