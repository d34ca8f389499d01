"""`urbanpulse replay`: real public datasets replayed through MQTT as if devices sent them.

mapping.py (strict YAML mappings) → readers.py (rows with line numbers) → plan.py (rows to
messages, every skip counted) → run.py (provision, pace, publish) → report.py (the summary).
"""
