"""Senders: apprise (DingTalk, WeCom and Feishu robots, email over SMTP, …) and JSON webhooks.

Each send either returns or raises DeliveryError with a reason fit for the attempt log; a
secret in a URL never reaches the log or the error (apprise's own privacy mode masks it).
Every message carries its idempotency key: as the `Idempotency-Key` header of webhooks and
apprise JSON endpoints, so that a receiver can drop a redelivery.
"""

from __future__ import annotations

import base64
import logging
import re
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit

import apprise
import httpx

from notify.config import Channel
from urbanpulse.errors import UrbanPulseError


class DeliveryError(UrbanPulseError):
    """A channel did not take a message; the notifier retries it later."""


def send(
    channel: Channel,
    *,
    title: str,
    body: str,
    key: str,
    attachment: tuple[str, bytes] | None = None,
) -> None:
    url = channel.resolved_url()
    if not url:
        raise DeliveryError(f"channel not configured: set {channel.url_env}")
    if channel.type == "webhook":
        _webhook(channel, url, title=title, body=body, key=key, attachment=attachment)
    else:
        _apprise(channel, url, title=title, body=body, key=key, attachment=attachment)


def _webhook(
    channel: Channel,
    url: str,
    *,
    title: str,
    body: str,
    key: str,
    attachment: tuple[str, bytes] | None,
) -> None:
    payload: dict[str, object] = {"title": title, "body": body, "idempotency_key": key}
    if attachment is not None:
        payload["attachment"] = {
            "filename": attachment[0],
            "base64": base64.b64encode(attachment[1]).decode(),
        }
    headers = {"Idempotency-Key": header_safe(key), **channel.resolved_headers()}
    try:
        r = httpx.post(url, json=payload, headers=headers, timeout=channel.timeout)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook {_host(url)}: {type(exc).__name__}") from None
    if r.status_code >= 300:
        raise DeliveryError(f"webhook {_host(url)}: HTTP {r.status_code}")


def _host(url: str) -> str:
    """host:port of a URL, without the user and password it may carry."""
    parts = urlsplit(url)
    return f"{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _apprise(
    channel: Channel,
    url: str,
    *,
    title: str,
    body: str,
    key: str,
    attachment: tuple[str, bytes] | None,
) -> None:
    if urlsplit(url).scheme in ("json", "jsons"):
        url += ("&" if "?" in url else "?") + f"+Idempotency-Key={quote(header_safe(key))}"
    sink = apprise.Apprise()
    if not sink.add(url):
        raise DeliveryError(f"not an apprise URL ({urlsplit(url).scheme}://…)")
    capture = apprise.LogCapture(level=logging.WARNING)  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory() as tmp, capture as logs:
        attach = None
        if attachment is not None:
            path = Path(tmp) / attachment[0]
            path.write_bytes(attachment[1])
            attach = apprise.AppriseAttachment(str(path))
        ok = sink.notify(
            title=title, body=body, body_format=apprise.NotifyFormat.MARKDOWN, attach=attach
        )
        if not ok:
            why = redact(" ".join(logs.getvalue().split()), url)[-300:] or "delivery failed"
            raise DeliveryError(f"{urlsplit(url).scheme}: {why}")


def header_safe(key: str) -> str:
    """The key as an HTTP header value (ASCII): anything else percent-encoded."""
    return quote(key, safe=":-_.")


def redact(text: str, url: str) -> str:
    """The text with every part of the URL that could be a secret (tokens, keys, passwords,
    addresses) replaced by ***."""
    for part in sorted(re.split(r"[/:@?&=+]", url), key=len, reverse=True):
        if len(part) >= 6:
            text = text.replace(part, "***")
    return text
