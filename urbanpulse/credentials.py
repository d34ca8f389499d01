"""Per-device MQTT credentials: Mosquitto's password and ACL files, written from the device
registry.

Each device's MQTT user name is its device id; it may publish on its own topic
(`<prefix>/<domain>/<device_id>`) and nothing else, and may read nothing. The ingest account
reads the device topics (also through its shared subscription) and its own control topics,
and may publish on none of the device topics. Nobody connects anonymously (the broker's
`allow_anonymous false`).

Passwords are random (192 bits), so the file's PBKDF2-SHA512 hashes (Mosquitto's `$7$` form)
need no more iterations than Mosquitto's own default to be safe. The files are rewritten as a
whole, atomically; a device keeps its password from one run to the next unless it is rotated,
and a device no longer in the registry loses its account. Only the passwords made in a run are
shown, once, in a file readable by its owner alone."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ITERATIONS = 101  # Mosquitto's default; the secrets are random, not people's passwords
SALT_BYTES = 12
USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # device ids: no ':', space or newline
TOPIC_PART = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")  # what goes into an ACL line


@dataclass(frozen=True, slots=True)
class Account:
    """A device that gets an account: its id (the user name) and its topic's domain."""

    device_id: str
    domain: str


@dataclass
class Outcome:
    created: dict[str, str] = field(default_factory=dict)  # user -> password, this run only
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    passwd: Path | None = None
    acl: Path | None = None
    dynsec: Path | None = None
    secrets_file: Path | None = None


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Mosquitto's `$7$` hash: PBKDF2-HMAC-SHA512 with its iteration count and salt."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    b64 = base64.b64encode
    return f"$7${ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash (as Mosquitto would decide)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), parts[4]
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(base64.b64encode(mine).decode(), digest)


def read_passwd(path: Path) -> dict[str, str]:
    """The users of a password file and their hashes (an absent file has none)."""
    if not path.exists():
        return {}
    users: dict[str, str] = {}
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed:
            raise ValueError(f"{path}:{n}: not user:hash")
        users[user] = hashed
    return users


def acl_text(
    accounts: Iterable[Account], *, prefix: str, ingest_user: str, ingest_group: str
) -> str:
    """The ACL file: the ingest account's read rights, then each device's one topic."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Written by `urbanpulse devices credentials` at {now}; re-run it rather than edit.",
        "# Devices publish on their own topic only and read nothing; the ingest account reads",
        "# every device topic and publishes on none of them.",
        f"user {ingest_user}",
        "# read rights are checked on delivery, against the message's topic: this line also",
        f"# covers the shared subscription $share/{ingest_group}/{prefix}/#",
        f"topic read {prefix}/#",
        "# its will, and other workers' (a peer drains a dead worker's session)",
        "topic readwrite urbanpulse/ingest/#",
        "# the compose stack's health check, and the broker's backlog for the metrics",
        "topic read $SYS/broker/uptime",
        "topic read $SYS/broker/store/messages/count",
        "",
    ]
    for a in sorted(accounts, key=lambda a: a.device_id):
        lines += [f"user {a.device_id}", f"topic write {prefix}/{a.domain}/{a.device_id}", ""]
    return "\n".join(lines)


def _write(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically (a broker reloading it never reads half a file), keeping the
    owner, group and mode an operator gave the file before (`chgrp mosquitto` survives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            was = path.stat()
            os.chown(tmp, was.st_uid, was.st_gid)
            mode = was.st_mode & 0o777
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _secrets_file(out: Path, created: dict[str, str], accounts: list[Account], prefix: str) -> Path:
    """The passwords made in this run, in a new file (mode 600) that no later run overwrites."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    fd, name = tempfile.mkstemp(dir=out, prefix=f"new-secrets-{stamp}-", suffix=".csv")
    topics = {a.device_id: f"{prefix}/{a.domain}/{a.device_id}" for a in accounts}
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "password", "publishes_on"])
        for user, secret in created.items():
            w.writerow([user, secret, topics.get(user, "(ingest: reads every device topic)")])
        f.flush()
        os.fsync(f.fileno())
    return Path(name)


def dynsec_config(
    hashes: dict[str, str],
    accounts: Iterable[Account],
    *,
    prefix: str,
    ingest_user: str,
    ingest_group: str,
) -> dict[str, object]:
    """The same accounts for Mosquitto's dynamic-security plugin, which checks what the ACL
    file cannot: subscriptions (a device may subscribe to nothing, so it cannot join the
    ingest workers' shared subscription and take its turn of the stream) and client ids (a
    device connects only as itself, so it cannot take over an ingest worker's session). The
    ingest account keeps any client id: a worker adopts a dead peer's session by its id."""

    def login(user: str) -> dict[str, object]:
        _, _, iterations, salt, digest = hashes[user].split("$")
        return {"password": digest, "salt": salt, "iterations": int(iterations)}

    def allow(kind: str, topic: str) -> dict[str, object]:
        return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}

    clients: list[dict[str, object]] = [
        {
            "username": ingest_user,
            "textname": "UrbanPulse ingest workers",
            **login(ingest_user),
            "roles": [{"rolename": "urbanpulse-ingest", "priority": 0}],
        }
    ]
    roles: list[dict[str, object]] = [
        {
            "rolename": "urbanpulse-ingest",
            "textname": "reads every device topic, publishes on none",
            "acls": [
                allow("subscribePattern", f"$share/{ingest_group}/{prefix}/#"),
                allow("subscribePattern", f"{prefix}/#"),
                allow("subscribePattern", "urbanpulse/ingest/#"),
                allow("publishClientSend", "urbanpulse/ingest/#"),
                allow("subscribeLiteral", "$SYS/broker/uptime"),
                allow("subscribeLiteral", "$SYS/broker/store/messages/count"),
            ],
        }
    ]
    for a in sorted(accounts, key=lambda a: a.device_id):
        role = f"device-{a.device_id}"
        clients.append(
            {
                "username": a.device_id,
                "clientid": a.device_id,  # connects as itself only
                **login(a.device_id),
                "roles": [{"rolename": role, "priority": 0}],
            }
        )
        roles.append(
            {
                "rolename": role,
                "acls": [allow("publishClientSend", f"{prefix}/{a.domain}/{a.device_id}")],
            }
        )
    return {
        # what no role grants is refused, but for receiving what one's subscriptions match
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def write_credentials(
    out: Path,
    accounts: list[Account],
    *,
    prefix: str,
    ingest_user: str = "ingest",
    ingest_group: str = "ingest",
    rotate: Iterable[str] = (),
    rotate_all: bool = False,
) -> Outcome:
    """Write `out/passwd` and `out/acl` (for Mosquitto's password and ACL files), the same
    accounts as `out/dynamic-security.json` (for its dynamic-security plugin, which also checks
    subscriptions and client ids) and, when passwords were made,
    `out/new-secrets-<time>.csv` (mode 600: hand each device its line, then delete the file)."""
    for name in [ingest_user, *(a.device_id for a in accounts)]:
        if not USER.fullmatch(name):
            raise ValueError(f"{name!r}: not usable as an MQTT user name")
    for what, part in [("prefix", prefix), ("ingest group", ingest_group)] + [
        (f"domain of {a.device_id}", a.domain) for a in accounts
    ]:
        if not TOPIC_PART.fullmatch(part):
            raise ValueError(f"{what} {part!r}: not usable in an ACL line")
    if ingest_user in {a.device_id for a in accounts}:
        raise ValueError(f"{ingest_user!r} is both the ingest account and a device")
    passwd, acl = out / "passwd", out / "acl"
    old = read_passwd(passwd)
    again = set(rotate)
    unknown = again - {a.device_id for a in accounts} - {ingest_user}
    if unknown:
        raise ValueError(f"--rotate: no such device: {', '.join(sorted(unknown))}")
    result = Outcome(passwd=passwd, acl=acl, dynsec=out / "dynamic-security.json")
    hashes: dict[str, str] = {}
    for user in [ingest_user, *sorted(a.device_id for a in accounts)]:
        if user in old and not rotate_all and user not in again:
            hashes[user] = old[user]
            result.kept.append(user)
            continue
        secret = secrets.token_urlsafe(24)
        result.created[user] = secret
        hashes[user] = hash_password(secret)
    result.removed = sorted(set(old) - set(hashes))
    if result.created:  # first: if anything fails later, the new passwords are not lost
        result.secrets_file = _secrets_file(out, result.created, accounts, prefix)
    # mode 640 on a first run: the broker's group reads them (chgrp mosquitto), nobody else
    _write(passwd, "".join(f"{u}:{h}\n" for u, h in hashes.items()), 0o640)
    _write(
        acl,
        acl_text(accounts, prefix=prefix, ingest_user=ingest_user, ingest_group=ingest_group),
        0o640,
    )
    dynsec = dynsec_config(
        hashes, accounts, prefix=prefix, ingest_user=ingest_user, ingest_group=ingest_group
    )
    assert result.dynsec is not None
    _write(result.dynsec, json.dumps(dynsec, indent=1, ensure_ascii=False) + "\n", 0o640)
    return result
