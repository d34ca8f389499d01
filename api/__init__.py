"""The HTTP API: how people and other systems read and act on the platform besides Grafana.

`create_app()` (api.app) builds the FastAPI application; `urbanpulse api` serves it with
uvicorn. One router module per resource lives in api.routes.
"""
