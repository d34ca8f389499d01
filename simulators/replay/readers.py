"""Reading a dataset's files as rows of raw cells, with their line numbers.

The csv module (not pandas) reads text files, because every skipped row is reported with its
file and line; openpyxl reads Excel sheets in read-only mode, cell values as they are stored
(numbers as numbers, text such as `NaN` as text).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from simulators.replay.errors import DatasetError
from simulators.replay.mapping import CsvFormat, JoinSpec, XlsxFormat

Cell = str | float | int | datetime | None


@dataclass(frozen=True, slots=True)
class Row:
    """One data row: where it is, its cells by column, or why it cannot be read as a row."""

    line: int
    cells: dict[str, Cell]
    error: str | None = None
    stripped: bool = False  # whitespace around a cell was removed (e.g. a stray tab)


@dataclass(frozen=True, slots=True)
class Table:
    """A file's column names and its rows (read lazily); `close` if they are not all read."""

    columns: tuple[str, ...]
    rows: Iterator[Row]
    close: Callable[[], None] = lambda: None


def _strip(values: list[str]) -> tuple[list[str], bool]:
    stripped = [v.strip() for v in values]
    return stripped, stripped != values


def read_csv(path: Path, fmt: CsvFormat) -> Table:
    try:
        handle = path.open(encoding=fmt.encoding, newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    reader = csv.reader(handle, delimiter=fmt.delimiter)
    if fmt.header:
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            handle.close()
            raise DatasetError(f"{path} is empty; expected a header row") from None
        if fmt.columns and header != fmt.columns:
            handle.close()
            raise DatasetError(f"{path}: header {header} differs from the mapping's {fmt.columns}")
    else:
        header = list(fmt.columns or [])

    def rows() -> Iterator[Row]:
        with handle:
            for record in reader:
                if not record:
                    continue  # a blank line holds no data
                values, stripped = _strip(record)
                if len(values) != len(header):
                    yield Row(
                        reader.line_num,
                        {},
                        f"{len(values)} fields, expected {len(header)}",
                    )
                    continue
                yield Row(reader.line_num, dict(zip(header, values, strict=True)), None, stripped)

    return Table(tuple(header), rows(), handle.close)


@functools.lru_cache(maxsize=4)
def _xlsx_sheet(
    path: str, mtime_ns: int, size: int, sheet: str | None, header_row: int
) -> tuple[tuple[str, ...], tuple[tuple[int, tuple[Cell, ...]], ...]]:
    """A sheet's header and non-empty rows; cached by file identity, because a workbook takes
    seconds to parse and a process replaying several windows of it (tests, a notebook) would
    otherwise parse it again each time."""
    del mtime_ns, size  # part of the cache key only
    import openpyxl  # noqa: PLC0415  (slow to import, and only Excel sources need it)

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"cannot read {path} as an Excel workbook: {exc}") from exc
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise DatasetError(f"{path} has no sheet {sheet!r} (sheets: {book.sheetnames})")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        it = ws.iter_rows(min_row=header_row, values_only=True)
        try:
            header = tuple("" if c is None else str(c).strip() for c in next(it))
        except StopIteration:
            raise DatasetError(f"{path}: no header row at row {header_row}") from None
        rows = []
        for n, values in enumerate(it, start=header_row + 1):
            if all(v is None for v in values):
                continue  # openpyxl reports formatted but empty rows
            rows.append(
                (
                    n,
                    tuple(
                        v if v is None or isinstance(v, str | int | float | datetime) else str(v)
                        for v in values
                    ),
                )
            )
        return header, tuple(rows)
    finally:
        book.close()


def read_xlsx(path: Path, fmt: XlsxFormat) -> Table:
    stat = path.stat()
    header, data = _xlsx_sheet(str(path), stat.st_mtime_ns, stat.st_size, fmt.sheet, fmt.header_row)

    def rows() -> Iterator[Row]:
        for n, values in data:
            cells: dict[str, Cell] = {}
            stripped = False
            for name, v in zip(header, values, strict=False):
                if isinstance(v, str):
                    text = v.strip()
                    stripped = stripped or text != v
                    cells[name] = text
                else:
                    cells[name] = v
            yield Row(n, cells, None, stripped)

    return Table(header, rows())


def read_table(path: Path, fmt: CsvFormat | XlsxFormat) -> Table:
    if isinstance(fmt, CsvFormat):
        return read_csv(path, fmt)
    return read_xlsx(path, fmt)


def read_join(folder: Path, join: JoinSpec) -> dict[str, dict[str, Cell]]:
    """The joined file as key -> cells named `<join name>.<column>`."""
    path = folder / join.file
    if not path.is_file():
        raise DatasetError(f"metadata file {path} (join {join.name!r}) is missing")
    table = read_csv(path, join.format)
    if join.key not in table.columns:
        raise DatasetError(f"{path} has no column {join.key!r} to join on")
    out: dict[str, dict[str, Cell]] = {}
    for row in table.rows:
        if row.error is None:
            key = str(row.cells[join.key])
            out.setdefault(key, {f"{join.name}.{k}": v for k, v in row.cells.items()})
    return out
