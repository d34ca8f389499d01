"""The bare-metal deployment files: every systemd unit runs a command the CLI accepts, and the
example environment file sets only settings that exist."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from notify.config import load_config
from urbanpulse.cli import build_parser
from urbanpulse.settings import Settings

SYSTEMD = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def units() -> dict[str, configparser.ConfigParser]:
    out = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(path.read_text())
        out[path.name] = unit
    return out


def test_every_unit_runs_a_command_the_cli_accepts() -> None:
    found = units()
    assert {"urbanpulse-migrate.service", "urbanpulse-ingest@.service",
            "urbanpulse-rules.service", "urbanpulse-notify.service",
            "urbanpulse-api.service"} <= set(found)  # fmt: skip
    for name, unit in found.items():
        service = unit["Service"]
        argv = shlex.split(service["ExecStart"].replace("%i", "1"))
        assert argv[0] == "/opt/urbanpulse/.venv/bin/urbanpulse", name
        args = build_parser().parse_args(argv[1:])
        assert callable(args.func), name
        assert service["User"] == "urbanpulse" and service["EnvironmentFile"], name
        if service.get("Type") != "oneshot":
            assert service["Restart"] == "always", name
            assert "urbanpulse-migrate.service" in unit["Unit"]["Requires"], name


def test_the_example_environment_sets_only_settings_that_exist() -> None:
    fields = {f"URBANPULSE_{name.upper()}" for name in Settings.model_fields}
    channels = {c.url_env for c in load_config().channels.values() if c.url_env}
    for line in (SYSTEMD / "urbanpulse.env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split("=", 1)[0]
        assert name in fields or name in channels, name


def test_a_placeholder_or_a_bad_url_is_refused_without_printing_secrets() -> None:
    from tests.test_cli import cli

    left = cli("status", env={"URBANPULSE_DATABASE_URL": "postgresql://u:CHANGE_ME@h/db"})
    assert left.returncode == 2
    assert "replace the placeholder CHANGE_ME in URBANPULSE_DATABASE_URL" in left.stderr
    bad = cli("status", env={"URBANPULSE_MQTT_URL": "http://user:s3cretpw@host:1883"})
    assert bad.returncode == 2 and "URBANPULSE_MQTT_URL" in bad.stderr
    assert "s3cretpw" not in bad.stderr + bad.stdout


def test_the_compose_stack_is_complete_and_its_commands_exist() -> None:
    """Checked by reading it: no container engine runs on these machines, and the docker
    client here has no compose plugin to run `docker compose config`."""
    import re

    import yaml

    root = SYSTEMD.parent
    text = (root / "compose.yaml").read_text()
    stack = yaml.safe_load(text)
    services = stack["services"]
    assert set(services) == {
        "timescaledb", "mosquitto", "grafana", "migrate", "ingest", "rules", "notify", "api",
    }  # fmt: skip
    for name, svc in services.items():
        assert svc.get("restart") in ("unless-stopped", "no"), name
        if name != "migrate":
            assert "healthcheck" in svc, name
        if "command" in svc:  # an UrbanPulse service: a command the CLI accepts
            args = build_parser().parse_args(svc["command"])
            assert callable(args.func), name
            if name != "migrate":
                assert svc["depends_on"]["migrate"] == {
                    "condition": "service_completed_successfully"
                }
    # every secret is required: compose stops before anything starts if one is missing
    for secret in ("URBANPULSE_DB_PASSWORD", "URBANPULSE_MQTT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + secret + r"(:\?[^}]*)?\}", text)
        assert uses and all(u.startswith(":?") for u in uses), secret
    for mount in services["mosquitto"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./") and not source.endswith(("passwd", "acl")):
            assert (root / source).exists(), source
    dockerfile = (root.parent / "Dockerfile").read_text()
    copied = set()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root.parent / src).exists(), src
                copied.add(src)
    # the image holds every package the wheel does, or `urbanpulse` there lacks commands
    project = tomllib.loads((root.parent / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units as installed, with ExecStart pointing at this
    checkout's urbanpulse (verify insists the program exists)."""
    exe = Path(sys.executable).with_name("urbanpulse")
    assert exe.exists()
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text().replace("/opt/urbanpulse/.venv/bin/urbanpulse", str(exe))
        (tmp_path / path.name).write_text(text)
    names = [p.name for p in sorted(tmp_path.glob("*.service"))]
    names.append("urbanpulse-ingest@1.service")  # an instance of the template
    got = subprocess.run(
        ["systemd-analyze", "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert "urbanpulse" not in got.stderr, got.stderr  # no warning about our units either


def _compose_client() -> list[str] | None:
    if shutil.which("docker"):
        got = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if got.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(_compose_client() is None, reason="no compose client here")
def test_compose_config_validates_and_refuses_a_missing_secret(tmp_path: Path) -> None:
    """`compose config` on the stack, with the files an operator provides. Debian's
    docker-compose (1.29) predates the top-level `name`, so it checks a copy without it."""
    client = _compose_client()
    assert client is not None
    deploy = tmp_path / "deploy"
    shutil.copytree(SYSTEMD.parent, deploy)
    shutil.copy(SYSTEMD.parent.parent / "Dockerfile", tmp_path / "Dockerfile")
    compose = deploy / "compose.yaml"
    if client == ["docker-compose"]:
        compose.write_text(
            "".join(
                line
                for line in compose.read_text().splitlines(keepends=True)
                if not line.startswith("name:")
            )
        )
    for name in ("mosquitto/passwd", "mosquitto/acl", "notify.yaml"):
        (deploy / name).touch()
    env = (deploy / "compose.env.example").read_text().replace("CHANGE_ME", "s3cret")
    (deploy / ".env").write_text(env)

    def config(env_text: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "test.env").write_text(env_text)
        return subprocess.run(
            [*client, "-f", str(compose), "--env-file", str(tmp_path / "test.env"), "config"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ.get("PATH", "")},
        )

    ok = config(env)
    assert ok.returncode == 0, ok.stderr
    assert "urbanpulse" in ok.stdout and "api" in ok.stdout
    missing = config(env.replace("URBANPULSE_DB_PASSWORD=s3cret\n", ""))
    assert missing.returncode != 0
    assert "URBANPULSE_DB_PASSWORD" in missing.stderr
