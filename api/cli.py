"""`urbanpulse api`: serve the HTTP API."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from urbanpulse.cli import Commands, settings_of

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    api = sub.add_parser("api", help="serve the HTTP API (OpenAPI docs at /docs)")
    api.add_argument("--host", help="listen address (default URBANPULSE_API_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default URBANPULSE_API_PORT, 8000)")
    api.add_argument(
        "--workers", type=int, help="worker processes (default URBANPULSE_API_WORKERS)"
    )
    api.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-For from a reverse proxy (the audit log's client address)",
    )
    api.set_defaults(func=cmd_api)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_of(args)
    if args.database_url:  # the app reads its settings from the environment, in every worker
        os.environ["URBANPULSE_DATABASE_URL"] = args.database_url
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    workers = args.workers or settings.api_workers
    print(f"UrbanPulse API on http://{host}:{port}/docs ({workers} worker(s))", file=sys.stderr)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=5,  # live streams never end by themselves
    )
    return 0
