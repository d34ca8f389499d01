"""Signed, expiring acknowledgement links: the notifier signs one per alert and department, the
API acknowledges the alert when the link comes back, without asking the manager to sign in.

A token is `<payload>.<mac>`, both base64url without padding: the payload is compact JSON
{"a": alert id, "d": department, "e": expiry (Unix seconds)} and the mac its HMAC-SHA256 under
the shared key. Signing and checking are pure; `link_key()` is the only part that touches the
database (the key lives there unless URBANPULSE_LINK_SECRET gives one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from urbanpulse.errors import UrbanPulseError

KEY_NAME = "ack_links"


class LinkError(UrbanPulseError):
    """An acknowledgement link that is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class AckClaim:
    alert_id: int
    department: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def sign(key: bytes, alert_id: int, department: str, expires: int) -> str:
    body = json.dumps(
        {"a": alert_id, "d": department, "e": expires}, ensure_ascii=False, separators=(",", ":")
    )
    payload = _b64(body.encode("utf-8"))
    return f"{payload}.{_mac(key, payload)}"


def verify(key: bytes, token: str, now: float) -> AckClaim:
    """The claim of a genuine, unexpired token; LinkError (saying which) for anything else."""
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac or len(token) > 2048:
        raise LinkError("malformed link")
    try:
        payload.encode("ascii")
        good = hmac.compare_digest(_mac(key, payload), mac)
    except (UnicodeEncodeError, ValueError):
        good = False
    if not good:
        raise LinkError("the link's signature does not match")
    try:
        data = json.loads(_unb64(payload))
        claim = AckClaim(int(data["a"]), str(data["d"]), int(data["e"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LinkError("malformed link") from exc
    if claim.expires <= now:
        raise LinkError("the link has expired; open the alert in the console instead")
    return claim


def link_key(conn: psycopg.Connection[Any], secret: str = "") -> bytes:
    """The signing key: the configured secret, else the one kept in the database (created on
    first use; concurrent first users agree on one)."""
    if secret:
        return hashlib.sha256(secret.encode("utf-8")).digest()
    conn.execute(
        "INSERT INTO app_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (KEY_NAME, secrets.token_bytes(32)),
    )
    row = conn.execute("SELECT value FROM app_secrets WHERE name = %s", (KEY_NAME,)).fetchone()
    conn.commit()
    assert row is not None
    return bytes(row[0])
