"""Provisioning: the data source, the folder and the dashboards, created or updated by uid in a
running Grafana through its HTTP API (grafana-client)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from dashboards.grafana import DATASOURCE, FOLDER, boards, dashboard_json
from urbanpulse.errors import UrbanPulseError
from urbanpulse.rulefmt.model import RuleSet


@dataclass(frozen=True)
class DatasourceSpec:
    """Where Grafana reaches the database (the password is read from an environment variable
    by the caller and never printed)."""

    host: str  # host:port as Grafana sees it
    database: str
    user: str
    password: str
    timescaledb: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "uid": DATASOURCE["uid"],
            "name": "UrbanPulse",
            "type": DATASOURCE["type"],
            "access": "proxy",
            "url": self.host,
            "user": self.user,
            "isDefault": False,
            "jsonData": {
                "database": self.database,
                "sslmode": "disable",
                "postgresVersion": 1500,
                "timescaledb": self.timescaledb,
            },
            **({"secureJsonData": {"password": self.password}} if self.password else {}),
        }


FOLDER_UID = "urbanpulse"
MIN_GRAFANA = (10, 2, 3)  # the data source type id grafana-postgresql-datasource


def provision(
    url: str, token: str, ruleset: RuleSet, datasource: DatasourceSpec, *, timeout: float = 10.0
) -> list[str]:
    """Create or update, by uid, the data source, the folder and every dashboard in a running
    Grafana through its HTTP API; idempotent. Returns what was done, a line each."""
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    done: list[str] = []
    try:
        health = api.health.check()
        version = str(health.get("version", "0"))
        parts = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
        if parts < MIN_GRAFANA:
            need = ".".join(map(str, MIN_GRAFANA))
            raise UrbanPulseError(
                f"Grafana {version} at {url} is too old: the dashboards need {need} or later"
            )
        done.append(f"Grafana {version} at {url}")
        ds = datasource.payload()
        try:
            api.datasource.get_datasource_by_uid(ds["uid"])
            api.datasource.update_datasource_by_uid(ds["uid"], ds)
            done.append(f"data source {ds['uid']}: updated")
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.datasource.create_datasource(ds)
            done.append(f"data source {ds['uid']}: created")
        try:
            api.folder.get_folder(FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: exists")
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(FOLDER, uid=FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: created")
        for board in boards(ruleset):
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**dashboard_json(board), "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "urbanpulse grafana provision",
                }
            )
            done.append(f"dashboard {board.uid}: saved")
    except GrafanaUnauthorizedError:
        raise UrbanPulseError(
            f"Grafana at {url} refused the token (401): use a service-account token with the "
            "Editor or Admin role"
        ) from None
    except GrafanaException as exc:
        raise UrbanPulseError(f"Grafana at {url}: {type(exc).__name__}: {exc}") from None
    return done
