"""Errors of `urbanpulse replay`.

    UrbanPulseError
    ├── ConfigError
    │   └── MappingError      a mapping file is invalid (every problem, with file:line)
    └── DatasetError          the data files are missing or do not match their mapping

Both say what to do next; bad *rows* are never errors: they are counted with a reason.
"""

from __future__ import annotations

from urbanpulse.errors import ConfigError, UrbanPulseError


class MappingError(ConfigError):
    """A dataset mapping is invalid; the message lists every problem with its location."""


class DatasetError(UrbanPulseError):
    """The dataset files cannot be read as their mapping says (missing folder, column, sheet)."""
