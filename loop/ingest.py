"""Ingest: read a pool file (CSV, TSV, JSONL, Parquet) into the ledger, all rows or none.

Texts are de-duplicated by normalised form (case-folded, whitespace collapsed), within the file and
against what the ledger already holds. An empty or non-text cell is an error that names the file, the
line and the column; nothing of a failed ingest is stored.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loop.errors import IngestError  # noqa: F401 (re-exported: callers catch it from here too)
from loop.ledger import Ledger

_SPACE = re.compile(r"\s+")




def normalise(text: str) -> str:
    """The form duplicates are compared in: case-folded, whitespace collapsed and trimmed."""
    return _SPACE.sub(" ", text).strip().casefold()


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            raise IngestError(f"{path}: the file is empty (no header row)")
        for row in reader:
            if None in row:
                raise IngestError(
                    f"{path}:{reader.line_num}: more cells than the header has columns ({len(reader.fieldnames)})"
                )
            yield reader.line_num, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise IngestError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    # "line" for Parquet is the 1-based row number
    yield from enumerate(table.to_pylist(), start=1)


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) pairs from a pool file, chosen by its extension."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, ",")
    if suffix in (".tsv", ".tab"):
        return _csv_rows(path, "\t")
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise IngestError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _cell(path: Path, line: int, row: dict, column: str, *, required: bool) -> str | None:
    if column not in row:
        if required:
            raise IngestError(f"{path}:{line}: column {column!r} is missing (columns: {', '.join(map(str, row))})")
        return None
    value = row[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise IngestError(f"{path}:{line}: column {column!r} is empty")
        return None
    if not isinstance(value, str):
        raise IngestError(f"{path}:{line}: column {column!r} is not text ({type(value).__name__}: {value!r:.40})")
    return value.strip()


def parse_pool(
    path: str | Path, *, text_col: str = "text", reference_col: str | None = None, group_col: str | None = None
) -> tuple[list[dict], int]:
    """Validate a whole pool file and return (rows, duplicates within the file)."""
    path = Path(path)
    rows: list[dict] = []
    seen: set[str] = set()
    duplicates = 0
    for line, raw in read_rows(path):
        text = _cell(path, line, raw, text_col, required=True)
        norm = normalise(text)
        if norm in seen:
            duplicates += 1
            continue
        seen.add(norm)
        rows.append(
            {
                "text": text,
                "norm": norm,
                "reference": _cell(path, line, raw, reference_col, required=False) if reference_col else None,
                "subgroup": _cell(path, line, raw, group_col, required=False) if group_col else None,
                "source": path.name,
                "line": line,
            }
        )
    if not rows:
        raise IngestError(f"{path}: no rows to ingest")
    return rows, duplicates


def ingest(
    ledger: Ledger,
    path: str | Path,
    *,
    text_col: str = "text",
    reference_col: str | None = None,
    group_col: str | None = None,
) -> dict[str, int]:
    """Validate the whole file first, then store it in one transaction; returns counts."""
    rows, dup_in_file = parse_pool(path, text_col=text_col, reference_col=reference_col, group_col=group_col)
    added, dup_in_ledger = ledger.add_pool(rows)
    return {"read": len(rows) + dup_in_file, "added": added, "duplicates": dup_in_file + dup_in_ledger}
