"""Opaque page cursors and CSV export, shared by the listings."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

from fastapi import HTTPException, Response
from fastapi.responses import StreamingResponse

CSV_MAX_ROWS = 1_000_000  # one export; beyond this, narrow the range


def encode_cursor(*values: Any) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The values a cursor carries, checked against the kinds the listing expects."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError
        out: list[Any] = []
        for value, kind in zip(raw, kinds, strict=True):
            if kind is datetime:
                out.append(datetime.fromisoformat(value))
            elif kind is int:
                if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
                    raise ValueError
                out.append(value)
            elif isinstance(value, kind):
                out.append(value)
            else:
                raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, detail="cursor: not a cursor this listing gave out") from exc
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a spreadsheet must not run a formula a device or person wrote
    return value


def csv_response(
    header: Sequence[str], rows: AsyncIterator[Iterable[Any]], filename: str
) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        buf.write("\ufeff")  # Excel opens UTF-8 Chinese text correctly with a BOM
        writer.writerow(header)
        n = 0
        async for row in rows:
            writer.writerow([_cell(v) for v in row])
            n += 1
            if n % 1000 == 0:
                yield buf.getvalue().encode("utf-8")
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode("utf-8")

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def json_page(texts: Sequence[str], limit: int, next_cursor: str | None) -> Response:
    """A Page answer from items already rendered as JSON by PostgreSQL (json_build_object):
    the hot listings skip building Python objects for every row and field."""
    body = "".join(
        (
            '{"items":[',
            ",".join(texts[:limit]),
            '],"next":',
            json.dumps(next_cursor),
            "}",
        )
    )
    return Response(body.encode("utf-8"), media_type="application/json")


def json_list(texts: Sequence[str]) -> Response:
    return Response(("[" + ",".join(texts) + "]").encode("utf-8"), media_type="application/json")
