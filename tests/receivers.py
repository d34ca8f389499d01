"""Local stand-ins for the endpoints notifications go to: an SMTP server and an HTTP receiver
(robots' webhooks, JSON endpoints, an SMS gateway), both on loopback, recording what they got."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from urbanpulse.serve import free_port


@dataclass
class Mail:
    sender: str
    to: list[str]
    message: Message

    @property
    def subject(self) -> str:
        from email.header import decode_header, make_header

        return str(make_header(decode_header(self.message["Subject"] or "")))

    @property
    def text(self) -> str:
        parts = self.message.walk() if self.message.is_multipart() else [self.message]
        out = []
        for part in parts:
            if part.get_content_type() == "text/plain":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    out.append(payload.decode(part.get_content_charset() or "utf-8"))
        return "\n".join(out)


class SmtpReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(
            Mail(envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 OK"

    def url(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=urbanpulse@yongchuan.example&to={to}&mode=insecure"

    def __enter__(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class HttpReceiver:
    """Records each POST it answered. `fail` paths answer 500; `delay_s` holds every answer
    back, and a request whose answer could not be written (the sender died) is not counted."""

    port: int = field(default_factory=free_port)
    requests: list[Request] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    slow: dict[str, float] = field(default_factory=dict)  # path → seconds to answer

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == "/" + path]

    def __enter__(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(size) or b"{}")
                wait = receiver.slow.get(self.path, receiver.delay_s)
                if wait:
                    time.sleep(wait)
                failing = self.path in receiver.fail
                try:
                    self.send_response(500 if failing else 200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    self.wfile.flush()
                except OSError:
                    return  # the sender is gone: not delivered
                if not failing:
                    receiver.requests.append(Request(self.path, dict(self.headers), body))

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
