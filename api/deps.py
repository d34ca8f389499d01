"""What every route needs: the application's state, a database connection, the caller (from
the bearer token) with a role check, and the audit log."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from api.hub import Hub
from urbanpulse.db.tokens import Role, digest
from urbanpulse.rulefmt.describe import clause_text, condition_text
from urbanpulse.rulefmt.model import Rule, RuleSet
from urbanpulse.settings import Settings

TOKEN_CACHE_S = 5.0  # a revoked token stops working within this long; saves a query per call
LAST_USED_EVERY_S = 60.0  # last_used_at is written at most this often per token

AConn = AsyncConnection[DictRow]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's holder, or a manager following a signed link."""

    name: str
    role: Role
    department: str | None

    def may_act_for(self, owner: str) -> bool:
        """Operators of a department act on that department's alerts; admins on any."""
        return self.role is Role.ADMIN or self.department is None or self.department == owner


@dataclass
class _Cached:
    principal: Principal | None
    token_id: int | None
    until: float
    used_written: float = 0.0


@dataclass
class ApiState:
    settings: Settings
    pool: AsyncConnectionPool[AConn]
    sync_pool: ConnectionPool  # for the few sync helpers shared with the CLI (KPIs, replay)
    auth_pool: AsyncConnectionPool[AConn]  # token checks: never wait behind the request's own
    catalogue: RuleSet
    tz: ZoneInfo
    link_key: bytes
    hub: Hub
    rules: dict[str, Rule] = field(default_factory=dict)
    rule_text: dict[str, dict[str, str]] = field(default_factory=dict)  # see rule_texts()
    # the wall clock the API reads "now" from in Python (links' expiry, default ranges and
    # starts); SQL's now() is the database's. Tests inject their own (create_app(clock=…)).
    clock: Callable[[], float] = time.time

    def now(self) -> datetime:
        """The clock's now, in UTC: a day before it is 24 hours before it, whatever the city's
        daylight-saving rules (wall-clock arithmetic in a zone with DST is not)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    @property
    def rule_meta(self) -> Jsonb:
        """`rule_text` as the parameter the SQL-rendered listings read it from."""
        return Jsonb(self.rule_text)

    tokens: dict[bytes, _Cached] = field(default_factory=dict)


def rule_texts(rules: dict[str, Rule]) -> dict[str, dict[str, str]]:
    """Each rule's titles, threshold and clause as an alert shows them (in Python for one
    alert, in SQL through `rule_meta` for the listings)."""
    return {
        rule.id: {
            "title_zh": rule.title.zh,
            "title_en": rule.title.en,
            "threshold": condition_text(rule),
            "clause": clause_text(rule),
        }
        for rule in rules.values()
    }


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_conn(state: State) -> AsyncIterator[AConn]:
    async with state.pool.connection() as conn:
        yield conn


# released when the route function returns, not after the response is sent: a streamed CSV
# export takes a connection of its own for as long as it streams
Conn = Annotated[AConn, Depends(get_conn, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="an API token (urbanpulse tokens create)")


def _unauthorized(why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=why, headers={"WWW-Authenticate": "Bearer"}
    )


async def lookup(state: ApiState, secret: str) -> Principal | None:
    """The holder of a token, or None when it is unknown, expired or revoked (cached for
    `TOKEN_CACHE_S`)."""
    key = digest(secret)
    now = time.monotonic()
    hit = state.tokens.get(key)
    if hit is None or hit.until < now:
        async with state.auth_pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT id, token_hash, name, role, department FROM api_tokens "
                    "WHERE token_hash = %s AND revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > now())",
                    (key,),
                )
            ).fetchone()
        principal = None
        if row is not None and hmac.compare_digest(bytes(row["token_hash"]), key):
            principal = Principal(str(row["name"]), Role(row["role"]), row["department"])
        if len(state.tokens) > 10_000:  # bounded: a flood of random tokens cannot grow it
            state.tokens.clear()
        used = hit.used_written if hit else 0.0
        hit = _Cached(principal, int(row["id"]) if row else None, now + TOKEN_CACHE_S, used)
        state.tokens[key] = hit
    if (
        hit.principal is not None
        and hit.token_id is not None
        and now - hit.used_written > (LAST_USED_EVERY_S)
    ):
        hit.used_written = now
        async with state.auth_pool.connection() as conn:
            await conn.execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (hit.token_id,)
            )
    return hit.principal


async def get_principal(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer token: send Authorization: Bearer <token>")
    secret = credentials.credentials
    if not secret or len(secret) > 200:
        raise _unauthorized("invalid, expired or revoked token")
    principal = await lookup(state, secret)
    if principal is None:
        raise _unauthorized("invalid, expired or revoked token")
    return principal


def bearer_secret(request: Request) -> str:
    """The token a request carries (the route's dependencies have checked it already)."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def require(role: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    async def check(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not who.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the {role.value} role; your token has {who.role.value}",
            )
        return who

    return check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


async def audit(  # noqa: PLR0917 -- reads as a sentence at call sites
    conn: AConn,
    who: Principal,
    action: str,
    target: str,
    detail: dict[str, Any],
    client: str | None,
) -> None:
    """Record a state-changing call; call it inside the change's own transaction so the log
    and the change are kept or lost together."""
    await conn.execute(
        "INSERT INTO audit_log (actor, role, action, target, detail, client) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (who.name, who.role.value, action, target, Jsonb(detail), client),
    )


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


def conflict(why: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=why)


def bad_request(why: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=why)
