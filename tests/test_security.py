"""Device credentials and ACLs against a real Mosquitto: the files `urbanpulse devices
credentials` writes from the registry, loaded by a broker of the test's own. A device publishes
on its own topic and nowhere else and reads nothing; the ingest account reads and publishes on
no device topic; nobody gets in anonymously or with a wrong password; rotation and removal take
effect when the broker reloads; and the whole pipeline works through those accounts, also over
TLS with a private CA."""

from __future__ import annotations

import csv
import queue
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from simulators.publisher import Publisher
from tests.pipeline import InThreadIngest, publish, settings_for, stored, wait_until
from tests.services import Mosquitto, scratch_database
from tests.streams import DEVICES, steady_stream
from tests.test_cli import cli
from urbanpulse.broker import parse_broker_url
from urbanpulse.credentials import (
    Account,
    check_password,
    hash_password,
    read_passwd,
    write_credentials,
)
from urbanpulse.db.devices import upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.serve import free_port
from urbanpulse.settings import load_settings


@dataclass
class Secured:
    db_url: str
    broker: Mosquitto
    prefix: str
    group: str
    out: Path
    secrets: dict[str, str]  # user -> password, from the run that made them

    def url(self, user: str | None = None, password: str | None = None) -> str:
        if user is None:
            return self.broker.url
        secret = self.secrets[user] if password is None else password
        return f"mqtt://{user}:{secret}@127.0.0.1:{self.broker.port}"

    def topic(self, domain: str, device: str) -> str:
        return f"{self.prefix}/{domain}/{device}"


def credentials(db_url: str, out: Path, prefix: str, group: str, *extra: str) -> str:
    """Run the real command; returns what it printed."""
    env = {
        "URBANPULSE_DATABASE_URL": db_url,
        "URBANPULSE_TOPIC_PREFIX": prefix,
        "URBANPULSE_INGEST_GROUP": group,
    }
    done = cli("devices", "credentials", "--out", str(out), *extra, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_secrets(out: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(out.glob("new-secrets-*.csv")):
        assert path.stat().st_mode & 0o077 == 0, "secrets readable by others"
        with path.open() as f:
            found.update({row["user"]: row["password"] for row in csv.DictReader(f)})
        path.unlink()  # as the operator is told to, once handed out
    return found


@pytest.fixture
def secured(tmp_path: Path, prefix: str) -> Iterator[Secured]:
    with scratch_database() as db_url:
        migrate(db_url, load_policy(), timescale_mode="off")
        with psycopg.connect(db_url) as conn:
            upsert_devices(conn, DEVICES)
        out = tmp_path / "auth"
        group = f"g{prefix.split('/', maxsplit=1)[0]}"
        credentials(db_url, out, prefix, group)
        broker = Mosquitto(tmp_path / "broker", password_file=out / "passwd", acl_file=out / "acl")
        broker.start()
        try:
            yield Secured(db_url, broker, prefix, group, out, new_secrets(out))
        finally:
            broker.stop()


class Client:
    """An MQTT v5 client that records what the broker answered and what it delivered."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        wait: float = 10.0,
        client_id: str | None = None,
    ) -> None:
        self.port = port
        self.wait = wait
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{user}-{free_port()}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, rcs)
        self.c.on_message = lambda _c, _u, m: self.got.put((m.topic, bytes(m.payload)))

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc
        self.connected.set()

    def __enter__(self) -> Client:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        self.connected.wait(self.wait)  # connack stays None if the broker never answers
        return self

    def __exit__(self, *_: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def publish(self, topic: str) -> ReasonCode:
        info = self.c.publish(topic, b'{"values": {"pm25": 35}}', qos=1)
        info.wait_for_publish(10)
        wait_until(lambda: info.mid in self.acks, timeout=10, what="PUBACK")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None
        wait_until(lambda: mid in self.subacks, timeout=10, what="SUBACK")
        return self.subacks[mid]


def refused(rc: ReasonCode | None) -> bool:
    return rc is not None and rc.is_failure


def nothing(q: queue.Queue[tuple[str, bytes]], wait: float = 1.0) -> bool:
    try:
        q.get(timeout=wait)
    except queue.Empty:
        return True
    return False


# --- the files -----------------------------------------------------------------------------------


def test_hashes_are_mosquittos_own_form(tmp_path: Path) -> None:
    mine = hash_password("s3cret")
    assert mine.startswith("$7$101$") and check_password("s3cret", mine)
    assert not check_password("other", mine)
    # the other way round: what mosquitto_passwd writes, this reads
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "dev1", "their-secret"],
        check=True,
        capture_output=True,
    )
    theirs = read_passwd(pwfile)["dev1"]
    assert check_password("their-secret", theirs) and not check_password("x", theirs)


def test_the_files_name_every_device_and_keep_passwords_across_runs(secured: Secured) -> None:
    users = read_passwd(secured.out / "passwd")
    assert set(users) == {"ingest"} | {d.device_id for d in DEVICES}
    assert set(secured.secrets) == set(users)  # each shown once, in the first run
    for user, secret in secured.secrets.items():
        assert check_password(secret, users[user])
    assert (secured.out / "passwd").stat().st_mode & 0o777 == 0o640
    acl = (secured.out / "acl").read_text()
    assert f"topic write {secured.topic('air', 'aq1')}" in acl
    assert f"topic read {secured.prefix}/#" in acl  # also what a shared subscription delivers
    assert "$SYS/broker/uptime" in acl  # the compose health check reads it as ingest
    (secured.out / "passwd").chmod(0o600)  # as an operator might have set it
    said = credentials(secured.db_url, secured.out, secured.prefix, secured.group)
    assert "0 new password(s)" in said and not list(secured.out.glob("new-secrets-*"))
    assert read_passwd(secured.out / "passwd") == users  # nothing changed
    assert (secured.out / "passwd").stat().st_mode & 0o777 == 0o600  # and its mode kept


def test_names_that_would_break_the_files_are_refused(tmp_path: Path) -> None:
    ok = [Account("aq1", "air")]
    cases: list[tuple[list[Account], dict[str, Any], str]] = [
        (ok, {"ingest_user": "ingest\nuser aq1"}, "user name"),
        ([Account("aq1 x", "air")], {}, "user name"),
        ([Account("aq1", "air\ntopic readwrite #")], {}, "ACL line"),
        (ok, {"ingest_group": "g #"}, "ACL line"),
        ([Account("ingest", "air")], {}, "both the ingest account and a device"),
    ]
    for accounts, kwargs, says in cases:
        with pytest.raises(ValueError, match=says):
            write_credentials(tmp_path / "out", accounts, prefix="yc/v1", **kwargs)
        assert not (tmp_path / "out" / "acl").exists()
    with pytest.raises(ValueError, match="no such device"):
        write_credentials(tmp_path / "out", ok, prefix="yc/v1", rotate=["nobody"])


# --- a real broker with them ------------------------------------------------------------------


def test_a_device_publishes_on_its_own_topic_only(secured: Secured) -> None:
    port = secured.broker.port
    with Client(port, "ingest", secured.secrets["ingest"]) as ingest:
        assert ingest.connack is not None and not refused(ingest.connack)
        assert not any(refused(rc) for rc in ingest.subscribe(f"{secured.prefix}/#"))
        own = secured.topic("air", "aq1")
        with Client(port, "aq1", secured.secrets["aq1"]) as aq1:
            assert aq1.connack is not None and not refused(aq1.connack)
            assert not refused(aq1.publish(own))
        assert ingest.got.get(timeout=10)[0] == own
        # another device's topic, its own id under another domain, anything else: PUBACK "not
        # authorised" (with max_queued_messages 0, Mosquitto 2.0 then also closes the
        # connection: a fresh one for each attempt)
        for topic in (
            secured.topic("flood", "fl1"),
            secured.topic("water", "aq1"),
            f"{secured.prefix}/air/aq1/extra",
            "urbanpulse/ingest/g/gone/x",
        ):
            with Client(port, "aq1", secured.secrets["aq1"]) as aq1:
                assert refused(aq1.publish(topic)), topic
        assert nothing(ingest.got)


def test_a_device_reads_nothing_and_ingest_writes_no_device_topic(secured: Secured) -> None:
    port = secured.broker.port
    with (
        Client(port, "ingest", secured.secrets["ingest"]) as ingest,
        Client(port, "aq1", secured.secrets["aq1"]) as aq1,
        Client(port, "fl1", secured.secrets["fl1"]) as fl1,
    ):
        # Mosquitto's ACL file grants the subscription and checks read rights on each message
        # it would deliver: the device gets nothing, whatever it subscribed to
        for topic in (secured.topic("flood", "fl1"), f"{secured.prefix}/#", "#", "$SYS/#"):
            aq1.subscribe(topic)
        assert not refused(fl1.publish(secured.topic("flood", "fl1")))
        assert not refused(fl1.publish(secured.topic("flood", "fl1")))
        assert nothing(aq1.got, wait=2.0)
        # the ingest account reads, but cannot speak for a device
        assert not any(refused(rc) for rc in ingest.subscribe(f"{secured.prefix}/#"))
    with (
        Client(port, "ingest", secured.secrets["ingest"]) as reader,
        Client(port, "ingest", secured.secrets["ingest"]) as writer,
    ):
        assert not any(refused(rc) for rc in reader.subscribe(f"{secured.prefix}/#"))
        assert refused(writer.publish(secured.topic("air", "aq1")))
        assert nothing(reader.got)


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "unknown user"])
def test_nobody_gets_in_without_an_account(secured: Secured, who: str) -> None:
    user, password = {
        "anonymous": (None, None),
        "wrong password": ("aq1", "not-the-password"),
        "unknown user": ("intruder", secured.secrets["aq1"]),
    }[who]
    with Client(secured.broker.port, user, password) as c:
        assert c.connack is not None and refused(c.connack), c.connack


def test_rotation_and_removal_take_effect_when_the_broker_reloads(secured: Secured) -> None:
    port = secured.broker.port
    old = secured.secrets["aq1"]
    with psycopg.connect(secured.db_url) as conn:
        conn.execute("DELETE FROM devices WHERE device_id = 'pk1'")
    said = credentials(
        secured.db_url, secured.out, secured.prefix, secured.group, "--rotate", "aq1"
    )
    assert "1 new password(s)" in said and "1 removed (pk1)" in said
    fresh = new_secrets(secured.out)
    assert set(fresh) == {"aq1"}
    secured.broker.reload()

    def refused_now(user: str, password: str) -> bool:
        with Client(port, user, password) as c:
            assert c.connack is not None
            return refused(c.connack)

    wait_until(lambda: refused_now("aq1", old), timeout=10, what="the old password refused")
    assert refused_now("pk1", secured.secrets["pk1"])  # gone from the registry, gone here
    assert not refused_now("aq1", fresh["aq1"])
    assert not refused_now("fl1", secured.secrets["fl1"])  # the others keep theirs


def test_ingest_with_its_account_stores_what_devices_publish_with_theirs(
    secured: Secured,
) -> None:
    settings = settings_for(secured.db_url, secured.url("ingest"), secured.prefix)
    stream = steady_stream(secured.prefix, 30)  # device wn1's messages
    with InThreadIngest(settings):
        publish(secured.url("wn1"), stream.messages, client_id="wn1")
        wait_until(
            lambda: stored(secured.db_url) >= stream.readings, timeout=60, what="readings stored"
        )
    assert stored(secured.db_url) == stream.readings


# --- TLS -------------------------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    ca_key, ca, key, req, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(req))  # fmt: skip
    run("x509", "-req", "-in", str(req), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


def test_a_private_ca_is_given_in_the_broker_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    broker = parse_broker_url(f"mqtts://ingest:s3cret@broker.example?ca={ca}")
    assert (broker.tls, broker.port, broker.ca_file) == (True, 8883, str(ca))
    assert "s3cret" not in str(broker)
    assert load_settings(mqtt_url=f"mqtts://broker.example:8883?ca={ca}").mqtt_url
    with pytest.raises(ValidationError, match="no such file"):
        load_settings(mqtt_url=f"mqtts://broker.example?ca={tmp_path / 'missing.pem'}")
    with pytest.raises(ValidationError, match="for mqtts"):
        load_settings(mqtt_url=f"mqtt://broker.example?ca={ca}")


def test_the_pipeline_runs_over_tls_with_a_private_ca(secured: Secured, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    tls = Mosquitto(
        tmp_path / "tls-broker",
        password_file=secured.out / "passwd",
        acl_file=secured.out / "acl",
        extra_conf=(
            # the deploy/mosquitto/tls.conf listener, on a free port
            f"listener {port} 127.0.0.1\n"
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\ntls_version tlsv1.2\n"
        ),
    )
    tls.start()
    try:
        base = f"127.0.0.1:{port}?ca={ca}"
        settings = settings_for(
            secured.db_url, f"mqtts://ingest:{secured.secrets['ingest']}@{base}", secured.prefix
        )
        stream = steady_stream(secured.prefix, 10)
        with InThreadIngest(settings):
            publish(f"mqtts://wn1:{secured.secrets['wn1']}@{base}", stream.messages)
            wait_until(
                lambda: stored(secured.db_url) >= stream.readings, timeout=60, what="over TLS"
            )
        # the TLS port speaks nothing else
        with Client(port, "ingest", secured.secrets["ingest"], wait=3) as plain:
            assert plain.connack is None
    finally:
        tls.stop()


# --- the dynamic-security plugin ----------------------------------------------------------------


@pytest.fixture
def dynsec(secured: Secured, tmp_path: Path) -> Iterator[Secured]:
    """The same accounts, from dynamic-security.json, in a broker with the plugin."""
    broker = Mosquitto(tmp_path / "dynsec", dynsec_file=secured.out / "dynamic-security.json")
    broker.start()
    try:
        yield Secured(
            secured.db_url, broker, secured.prefix, secured.group, secured.out, secured.secrets
        )
    finally:
        broker.stop()


def test_dynsec_devices_publish_as_themselves_on_their_own_topic_only(dynsec: Secured) -> None:
    port = dynsec.broker.port
    aq1 = dynsec.secrets["aq1"]
    with Client(port, "ingest", dynsec.secrets["ingest"]) as ingest:
        assert not refused(ingest.connack)
        assert not any(refused(rc) for rc in ingest.subscribe(f"{dynsec.prefix}/#"))
        with Client(port, "aq1", aq1, client_id="aq1") as device:
            assert device.connack is not None and not refused(device.connack)
            assert not refused(device.publish(dynsec.topic("air", "aq1")))
        assert ingest.got.get(timeout=10)[0] == dynsec.topic("air", "aq1")
        # refused with PUBACK "not authorised" (then Mosquitto may close the connection: a
        # fresh one for each attempt)
        for topic in (dynsec.topic("flood", "fl1"), "urbanpulse/ingest/g/gone/x"):
            with Client(port, "aq1", aq1, client_id="aq1") as device:
                assert refused(device.publish(topic)), topic
        assert nothing(ingest.got)
    # a device connects under its own client id only
    for client_id in (f"urbanpulse-ingest-{dynsec.group}-host-0", "fl1", None):
        with Client(port, "aq1", aq1, client_id=client_id) as device:
            assert device.connack is not None and refused(device.connack), client_id
    for user, password in ((None, None), ("aq1", "wrong")):
        with Client(port, user, password, client_id="aq1") as c:
            assert c.connack is not None and refused(c.connack)


def test_dynsec_a_device_may_subscribe_to_nothing(dynsec: Secured) -> None:
    with Client(dynsec.broker.port, "aq1", dynsec.secrets["aq1"], client_id="aq1") as device:
        for topic in (
            f"$share/{dynsec.group}/{dynsec.prefix}/+/+",  # the ingest workers' group
            dynsec.topic("flood", "fl1"),
            f"{dynsec.prefix}/#",
            "#",
            "$SYS/#",
        ):
            assert all(refused(rc) for rc in device.subscribe(topic)), topic


def test_dynsec_ingest_loses_nothing_to_a_device_joining_its_group_or_taking_its_id(
    dynsec: Secured,
) -> None:
    """The two attacks the ACL file cannot stop: a device account subscribing to the ingest
    workers' shared subscription (it would take its turn of the stream), and a device taking
    over an ingest worker's session by its client id."""
    port = dynsec.broker.port
    worker_id = f"w-{dynsec.prefix[:6]}"
    settings = settings_for(
        dynsec.db_url, dynsec.url("ingest"), dynsec.prefix, ingest_client_id=worker_id
    )
    stream = steady_stream(dynsec.prefix, 60)
    with InThreadIngest(settings):
        intruder = Client(port, "aq1", dynsec.secrets["aq1"], client_id="aq1").__enter__()
        try:
            intruder.subscribe(f"$share/{settings.ingest_group}/{dynsec.prefix}/+/+")
            with Client(port, "aq1", dynsec.secrets["aq1"], client_id=worker_id) as thief:
                assert thief.connack is not None and refused(thief.connack)
            with Publisher(parse_broker_url(dynsec.url("wn1")), client_id="wn1") as device:
                for topic, payload in stream.messages:
                    device.publish(topic, payload)
            wait_until(
                lambda: stored(dynsec.db_url) >= stream.readings, timeout=60, what="every reading"
            )
            assert nothing(intruder.got)
        finally:
            intruder.__exit__()
    assert stored(dynsec.db_url) == stream.readings
