"""API tokens: created and revoked with `urbanpulse tokens ...`, checked by the HTTP API.

A token is shown once, when it is created; the database keeps only its SHA-256 (a token is
32 random bytes, so a fast hash is enough: there is nothing to brute-force). Roles, from the
least to the most trusted: viewer (reads), operator (also acknowledges, assigns, comments,
resolves and silences), admin (also devices, tokens, quarantine replay and the audit log).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg

from urbanpulse.errors import ConfigError

PREFIX = "upt_"  # recognisable in logs and by secret scanners


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    department: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


_COLUMNS = "id, name, role, department, created_at, expires_at, revoked_at, last_used_at"


def _info(row: tuple[Any, ...]) -> TokenInfo:
    return TokenInfo(int(row[0]), str(row[1]), Role(row[2]), *row[3:])


def create_token(
    conn: psycopg.Connection[Any],
    name: str,
    role: Role,
    *,
    department: str | None = None,
    expires_in: timedelta | None = None,
) -> tuple[str, TokenInfo]:
    """A new token (the secret, returned once) with its stored description."""
    secret = new_secret()
    try:
        row = conn.execute(
            f"INSERT INTO api_tokens (name, role, department, token_hash, expires_at) "
            f"VALUES (%s, %s, %s, %s, now() + %s) RETURNING {_COLUMNS}",
            (name, role.value, department or None, digest(secret), expires_in),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        conn.rollback()
        raise ConfigError(
            f"a token named {name!r} exists; revoke it or pick another name"
        ) from None
    except psycopg.errors.CheckViolation:
        conn.rollback()
        raise ConfigError(
            f"token name {name!r}: use letters, digits and . _ @ - (at most 64)"
        ) from None
    conn.commit()
    assert row is not None
    return secret, _info(row)


def revoke_token(conn: psycopg.Connection[Any], name: str) -> bool:
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL", (name,)
    )
    conn.commit()
    return cur.rowcount == 1


def list_tokens(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[TokenInfo]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE %s OR revoked_at IS NULL ORDER BY name",
        (include_revoked,),
    ).fetchall()
    conn.commit()
    return [_info(r) for r in rows]
