"""The error hierarchy of the shared core.

    UrbanPulseError                 anything this project raises on purpose
    ├── ConfigError                 our own configuration is wrong (settings, files we read)
    ├── ContractError               the metric registry or a device file breaks the contract
    └── DatabaseError
        ├── DatabaseUnavailable     cannot reach PostgreSQL right now (retry may help)
        ├── DatabaseAuthError       PostgreSQL refused our credentials (retrying will not help)
        └── MigrationError          the schema cannot be brought to the current version

Every message says what to do next, because the person reading it is usually an operator.
"""

from __future__ import annotations


class UrbanPulseError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(UrbanPulseError):
    """Our own configuration (settings, rule or device files) is invalid."""


class ContractError(UrbanPulseError):
    """The metric registry or a provisioning file breaks the message contract."""


class DatabaseError(UrbanPulseError):
    """A problem with the database that is not a bug in the caller."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached; retrying later may succeed."""


class DatabaseAuthError(DatabaseError):
    """PostgreSQL refused the credentials; retrying will not help."""


class MigrationError(DatabaseError):
    """The schema cannot be migrated (a changed migration, a failed statement)."""
