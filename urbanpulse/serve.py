"""Run `urbanpulse api` as a child process and wait until it is ready: the demo, the API
benchmark and the tests start it this way (through the CLI, so nothing imports `api`). Also
the two chores of every such child: a free port for it, and stopping it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from urbanpulse.errors import UrbanPulseError


def start_api(
    database_url: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    workers: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """The process and its base URL once /readyz answers 200; UrbanPulseError (with the end of
    `log`, where its output goes) if it exits or is not ready within `timeout`."""
    argv = [sys.executable, "-m", "urbanpulse.cli", "api", "--port", str(port)]
    if workers:
        argv += ["--workers", str(workers)]
    with log.open("ab") if log else open(os.devnull, "wb") as sink:  # noqa: PTH123
        proc = subprocess.Popen(
            argv,
            env={**os.environ, "URBANPULSE_DATABASE_URL": database_url, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    said = log.read_text(errors="replace")[-2000:] if log else ""
    raise UrbanPulseError(f"the API did not become ready within {timeout:.0f} s\n{said}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
