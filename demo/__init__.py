"""`urbanpulse demo`: the whole platform end to end on a database of its own (run.py)."""
