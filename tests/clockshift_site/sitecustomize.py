"""Moves the wall clock of every Python process started with this folder on PYTHONPATH by
URBANPULSE_TEST_CLOCK_SHIFT_S seconds (time-machine, ticking): `python -m tests.clockshift`
puts it there, so pytest and every service it starts (API, ingest, rules, notifier) see the
same moved clock. The monotonic clock stays real. Without the variable it does nothing."""

from __future__ import annotations

import os

_SHIFT = os.environ.get("URBANPULSE_TEST_CLOCK_SHIFT_S")
if _SHIFT:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_SHIFT), tick=True).start()
    # its clock starts ticking at the first reading, not at start(): read it now, or this
    # process runs behind the database's moved clock by however long the start-up takes
    time.time()
