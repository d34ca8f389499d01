"""Real services for the tests: per-test databases, a private Mosquitto, a cuttable TCP proxy."""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from urbanpulse.db.connect import drop_database, with_database
from urbanpulse.serve import free_port, stop_process

SERVER_URL = os.environ.get(
    "URBANPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TIMESCALE_URL = os.environ.get(
    "URBANPULSE_TEST_TIMESCALE_URL", "postgresql://postgres@127.0.0.1:5433/postgres"
)


@dataclass(frozen=True, slots=True)
class Backend:
    """A storage path the tests run on: plain PostgreSQL, or a server with TimescaleDB
    preloaded (`.ci/run` starts one on 5433 from the build in shared/vendor)."""

    name: str
    server_url: str
    timescale_mode: str  # what `migrate` is asked for: "off" or "require"

    @property
    def timescale(self) -> bool:
        return self.timescale_mode == "require"


PLAIN = Backend("plain", SERVER_URL, "off")
TIMESCALE = Backend("timescaledb", TIMESCALE_URL, "require")


@functools.cache
def timescale_problem() -> str | None:
    """Why the TimescaleDB server cannot be used by the tests, or None when it can."""
    try:
        with psycopg.connect(TIMESCALE_URL, connect_timeout=3) as conn:
            available = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    except psycopg.Error as exc:
        return f"TimescaleDB server not reachable at {TIMESCALE_URL} ({str(exc).strip()[:120]})"
    if available is None:
        return f"the server at {TIMESCALE_URL} has no TimescaleDB extension installed"
    if preload is None or "timescaledb" not in str(preload[0]):
        return f"the server at {TIMESCALE_URL} does not preload timescaledb"
    return None


def need_timescale() -> None:
    """Skip the calling test where TimescaleDB is not set up (with the reason and the fix);
    fail it where it must be (URBANPULSE_REQUIRE_TIMESCALEDB, as CI sets)."""
    problem = timescale_problem()
    if problem is None:
        return
    fix = "run .ci/run as root once, or set URBANPULSE_TEST_TIMESCALE_URL"
    if os.environ.get("URBANPULSE_REQUIRE_TIMESCALEDB"):
        pytest.fail(f"TimescaleDB is required here: {problem}; {fix}")
    pytest.skip(f"{problem}; {fix}")


DYNSEC_PLUGIN = next(
    (
        str(p)
        for p in [
            *sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")),
            Path("/usr/lib/mosquitto_dynamic_security.so"),
        ]
        if p.exists()
    ),
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
)


@contextlib.contextmanager
def scratch_database(server_url: str = SERVER_URL) -> Iterator[str]:
    """A URL of a database name no one else uses; dropped afterwards (created by migrate)."""
    url = with_database(server_url, f"up_test_{uuid.uuid4().hex[:12]}")
    try:
        yield url
    finally:
        drop_database(url)


class Mosquitto:
    """A private broker on a free port with persistence, started and stopped by the tests."""

    def __init__(
        self,
        workdir: Path,
        *,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        port: int | None = None,
        extra_conf: str = "",
        dynsec_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.dynsec_file = dynsec_file
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # started as root, mosquitto would otherwise drop to a user that cannot read tmp
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'false' if self.password_file or self.dynsec_file else 'true'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # unlimited: the broker holds the backlog
            "max_inflight_messages 0\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            + (f"password_file {self.password_file}\n" if self.password_file else "")
            + (f"acl_file {self.acl_file}\n" if self.acl_file else "")
            + (
                f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {self.dynsec_file}\n"
                if self.dynsec_file
                else ""
            )
            + self.extra_conf
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log')}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def reload(self) -> None:
        """Make it read its password and ACL files again (SIGHUP), as an operator would; it
        does so between network loops, and says nothing when done: poll for the effect."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection at once and
    `refuse(seconds)` rejects new ones for a while (a database outage as clients see it)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def refuse(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds
        self.cut()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


def _postgres_bin(name: str) -> str:
    """A server binary of the newest installed PostgreSQL (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: p.parts[-3])
    if found:
        return str(found[-1])
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"PostgreSQL's {name} is not installed (apt install postgresql)")


class PostgresCluster:
    """A PostgreSQL server of the tests' own (initdb in a fresh directory, a free port), so
    that a test may stop, crash and restart it. PostgreSQL refuses to run as root: under root
    the cluster belongs to the `postgres` user."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        """`env`: extra environment for the server's processes (e.g. a moved clock)."""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="up-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        if env:
            self._as += ["env", *(f"{k}={v}" for k, v in env.items())]
        self._run(
            _postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c max_connections=60 -c shared_buffers=64MB"
        )
        self._run(
            _postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` is an orderly shutdown; `immediate` is a crash (recovery from WAL on start)."""
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def _pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, WAL writer, …)."""
        main = int((self.data / "postmaster.pid").read_text().split()[0])
        out = [main]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the field after the parenthesised command name: state, then the parent pid
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == main:
                    out.append(int(stat.parent.name))
        return out

    def pause(self) -> None:
        """Freeze the whole server (SIGSTOP): connections stay open and nothing answers, as
        with a server stalled on its disk."""
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
