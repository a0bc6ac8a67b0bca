"""Ingest: read a pool file (CSV, TSV, JSONL, Parquet) into the ledger, all rows or none.

Texts are de-duplicated by normalised form (case-folded, whitespace collapsed), within the file and
against what the ledger already holds. Every problem is a one-line `IngestError` that names the file,
the line (the row, for Parquet) and the column, and says what to do; nothing of a failed ingest is stored.

How a file is read:
- Bytes are decoded as strict UTF-8, unless a byte-order mark says UTF-8, UTF-16 or UTF-32 (the mark is
  dropped, so the first column keeps its name) or the caller names an `encoding`.
- CSV/TSV quoting is strict: an unclosed quote or text after a closing quote is an error at the line
  where the quoted cell starts, never rows silently merged. Every row needs one cell per header column
  (blank lines are skipped), and the text, reference and group columns must all be in the header.
- A .csv whose header has no comma but one of ';', '|' or tab is read with that delimiter unless
  `csv.Sniffer` picks another; Excel's `sep=;` first line is honoured. The counts then carry `delimiter`.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop.errors import IngestError
from loop.ledger import Ledger

_SPACE = re.compile(r"\s+")
_SEP_LINE = re.compile(r"sep=([,;|\t])")  # Excel's first line naming the delimiter
# (mark, codec, name reported): UTF-32 first, since its little-endian mark starts like UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be"),
)
_DELIMITERS = {",": "comma", ";": "semicolon", "|": "pipe", "\t": "tab"}
_SNIFF_CHARS = 4096  # csv.Sniffer's regexes are quadratic in the worst case: give it a head only
_ENCODING_HINT = ("pass its encoding, e.g. --encoding cp1252 (Excel on Windows) or --encoding latin-1"
                  " (pool.encoding in the settings)")
_FLAGS = {"text": "--text-col", "reference": "--reference-col", "group": "--group-col"}
_QUOTE_FIX = 'close it, and write a quote inside a quoted cell as ""'


def normalise(text: str) -> str:
    """The form duplicates are compared in: case-folded, whitespace collapsed and trimmed."""
    return _SPACE.sub(" ", text).strip().casefold()


def _error(message: str) -> IngestError:
    """An IngestError on one printable line (names and cells quoted in it may hold line breaks)."""
    return IngestError("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


@dataclass
class PoolFile:
    """A validated pool file: the rows to store, duplicates within it, and how it was read."""

    rows: list[dict]
    duplicates: int
    encoding: str | None = None  # None for Parquet
    delimiter: str | None = None  # only when not the extension's own (sniffed, or Excel's sep= line)
    merged: int = 0  # repeated texts whose rows brought another reference or group (kept on the first)


@dataclass
class _Source:
    """What a reader found: the header (None for JSONL, whose lines carry their own keys) and the rows."""

    rows: Iterator[tuple[int, dict[str, Any]]]
    columns: list[str] | None = None
    where: str = ""  # "file:line" of the header, for errors about columns
    hint: str = ""  # appended to a missing-column error: what the header suggests went wrong
    encoding: str | None = None
    delimiter: str | None = None
    keys: dict[str, None] = field(default_factory=dict)  # JSONL: every key seen, in order


def _utf16_guess(data: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' when the bytes look like UTF-16 text without a byte-order mark."""
    head = data[:4096]
    nuls = head.count(0)
    if not head or nuls * 4 < len(head):
        return None
    return "utf-16-le" if head[1::2].count(0) * 2 >= nuls else "utf-16-be"


def _utf16_fix(data: bytes, encoding: str | None, skip: int) -> str | None:
    """The advice for text that looks like UTF-16 without a byte-order mark (none named), else None."""
    guess = _utf16_guess(data) if encoding is None and not skip else None
    return f"it looks like UTF-16 without a byte-order mark: pass --encoding {guess} (pool.encoding)" if guess else None


def _decode(path: Path, data: bytes, encoding: str | None) -> tuple[str, str]:
    """The file's text and the encoding read: the one named, else a byte-order mark's, else strict UTF-8."""
    skip, codec, name = 0, encoding or "utf-8", encoding or "utf-8"
    if encoding is None:
        for bom, bom_codec, bom_name in _BOMS:
            if data.startswith(bom):
                skip, codec, name = len(bom), bom_codec, bom_name
                break
    try:
        text = data[skip:].decode(codec)
    except LookupError:
        raise _error(
            f"{path}: unknown text encoding {encoding!r}; use one Python knows, e.g. 'utf-8', 'cp1252', 'latin-1'"
            " or 'utf-16'"
        ) from None
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data[skip:offset].decode(codec, errors="replace").count("\n") + 1
        utf16 = _utf16_fix(data, encoding, skip)
        if skip:
            fix = f"the byte-order mark says {name}, but the file is not (or is cut short): export it again"
        elif utf16:
            fix = utf16
        elif encoding is None:
            fix = f"save it as UTF-8 or {_ENCODING_HINT}"
        else:
            fix = f"it is not in that encoding: {_ENCODING_HINT}"
        raise _error(f"{path}:{line}: not valid {name} (byte 0x{data[offset]:02x} at offset {offset}); {fix}") from None
    text = text.removeprefix("\ufeff")
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        offset = skip + len(text[:nul].encode(codec, errors="replace"))
        fix = _utf16_fix(data, encoding, skip) or "a pool file is text: remove it, or export the file again"
        raise _error(f"{path}:{line}: NUL character (byte offset {offset}); {fix}")
    return text, name


def _plural(n: int, word: str) -> str:
    """'1 cell', '2 cells'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _quote_error(path: Path, start: int, end: int, exc: csv.Error) -> IngestError:
    """The csv module's strict-mode complaint as a message about the row that starts on `start`."""
    message = str(exc)
    if "end of data" in message:
        return _error(
            f"{path}:{start}: unclosed quote: the quoted cell that starts on this line runs on to the end of the"
            f" file; {_QUOTE_FIX}"
        )
    if "expected after" in message and end > start:
        return _error(
            f"{path}:{start}: unclosed quote: the quoted cell that starts on this line runs on to line {end};"
            f" {_QUOTE_FIX}"
        )
    if "expected after" in message:
        return _error(
            f"{path}:{start}: stray quote: text follows the closing quote of a quoted cell; quote the whole cell"
            ' and write each quote inside it as ""'
        )
    return _error(f"{path}:{end}: cannot read this row ({message})")


def _ragged(path: Path, start: int, end: int, cells: int, columns: int, delimiter: str, note: str) -> str:
    """The message for a row whose cell count is not the header's."""
    counts = f"{_plural(cells, 'cell')}, {_plural(columns, 'column')}"
    if end > start:
        return (
            f"{path}:{start}: unclosed quote? the row that starts here runs on to line {end} and has {counts};"
            f" {_QUOTE_FIX}{note}"
        )
    if cells > columns:
        return (
            f"{path}:{start}: more cells than the header has columns ({counts}); quote cells that contain a"
            f" {_DELIMITERS[delimiter]}{note}"
        )
    return (
        f"{path}:{start}: fewer cells than the header has columns ({counts}); give every row one cell per"
        f" column{note}"
    )


def _sniff(text: str, first: str) -> str | None:
    """The one delimiter (';', '|' or tab) a comma-less .csv header holds, unless csv.Sniffer picks another."""
    if "," in first:
        return None
    candidates = [d for d in ";|\t" if d in first]
    if len(candidates) != 1:
        return None
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample[len(first) :]:
        sample = sample[: sample.rindex("\n")]
    try:
        guess = csv.Sniffer().sniff(sample, delimiters=",;|\t").delimiter
    except csv.Error:  # the rows do not agree: read with the header's, and let the bad row be named
        guess = candidates[0]
    return guess if guess == candidates[0] else None


def _delimited(path: Path, text: str, delimiter: str, *, sniff: bool) -> _Source:
    """A CSV/TSV file's header and rows; `sniff` lets a .csv's header pick another delimiter."""
    offset, chosen = 0, None
    first = text.split("\n", 1)[0].split("\r", 1)[0]
    sep = _SEP_LINE.fullmatch(first)
    if sep:
        chosen, offset = sep.group(1), 1
        rest = text[len(first) :]
        text = rest[2:] if rest.startswith("\r\n") else rest[1:]
    elif sniff:
        chosen = _sniff(text, first)
    if chosen == delimiter:
        chosen = None
    delimiter = chosen or delimiter
    note = f" (read as {_DELIMITERS[delimiter]}-separated)" if chosen else ""
    limit = min(len(text) + 1, 2**31 - 1)
    if limit > csv.field_size_limit():  # a huge cell is read, not a traceback (the limit only ever rises)
        csv.field_size_limit(limit)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)

    end, cells = offset, []
    while not cells:  # blank lines before the header are skipped
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            raise _error(f"{path}: the file is empty (no header row)") from None
        except csv.Error as exc:
            raise _quote_error(path, start, offset + reader.line_num, exc) from None
        end = offset + reader.line_num
    header = [c.strip() for c in cells]
    if not any(header):
        raise _error(f"{path}:{start}: the header row is empty; the first line must name the columns, e.g. text")
    hint = ""
    others = [d for d in _DELIMITERS if d != delimiter and len(header) == 1 and d in header[0]]
    if others:
        kinds = " or ".join(f"{_DELIMITERS[d]}-separated" for d in others)
        hint = (
            f"; the header is one cell containing {others[0]!r}: the file looks {kinds}; save it"
            " comma-separated as .csv or tab-separated as .tsv"
        )
    elif end > start:
        hint = f"; the header runs on to line {end}: an unclosed quote?"

    def rows(end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise _quote_error(path, start, offset + reader.line_num, exc) from None
            end = offset + reader.line_num
            if not cells or (len(cells) == 1 < len(header) and start == end and not cells[0].strip()):
                continue  # a blank (or whitespace-only) line
            if len(cells) != len(header):
                raise _error(_ragged(path, start, end, len(cells), len(header), delimiter, note))
            yield start, dict(zip(header, cells, strict=True))

    return _Source(rows(end), header, f"{path}:{start}", hint, delimiter=chosen)


_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _jsonl(path: Path, text: str, source: _Source) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) pairs of a JSON Lines text; blank lines are skipped, keys seen go to `source.keys`."""
    for line_no, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            array = " (a JSON array of objects is not JSON Lines)" if line.lstrip().startswith("[") else ""
            raise _error(
                f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON"
                f' object, like {{"text": "..."}}{array}'
            ) from None
        except (ValueError, RecursionError) as exc:  # an int of over 4300 digits; nesting too deep
            raise _error(
                f"{path}:{line_no}: cannot read this JSON ({exc}); each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            kind = _JSON_TYPES.get(type(row), "null")
            raise _error(
                f"{path}:{line_no}: expected a JSON object, got {kind}; each line must be one JSON object, like"
                ' {"text": "..."} (a JSON array of objects is not JSON Lines)'
            )
        source.keys.update(dict.fromkeys(row))
        yield line_no, row


def _parquet(path: Path, wanted: list[str] | None) -> _Source:
    """A Parquet file's columns and, reading only the `wanted` ones, its rows ("line" is the 1-based row)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _error(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
        columns = list(parquet.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "unreadable"
        raise _error(f"{path}: not a readable Parquet file ({exc})") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            table = parquet.read(columns=None if wanted is None else [c for c in dict.fromkeys(wanted) if c in columns])
        except Exception as exc:  # as above
            raise _error(f"{path}: not a readable Parquet file ({exc})") from None
        yield from enumerate(table.to_pylist(), start=1)

    return _Source(rows(), columns, str(path))


def _open(path: Path, wanted: list[str] | None, encoding: str | None) -> _Source:
    """The reader for a pool file, chosen by its extension."""
    if not path.exists():
        raise _error(f"{path}: file not found")
    suffix = path.suffix.lower()
    kinds = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": "", ".ndjson": "", ".parquet": ""}
    if suffix not in kinds:
        raise _error(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    if suffix == ".parquet":
        return _parquet(path, wanted)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _error(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    text, used = _decode(path, data, encoding)
    if kinds[suffix]:
        source = _delimited(path, text, kinds[suffix], sniff=suffix == ".csv")
    else:
        source = _Source(iter(()))
        source.rows = _jsonl(path, text, source)
    source.encoding = used
    return source


def read_rows(path: str | Path, *, encoding: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) pairs from a pool file, chosen by its extension (rows are checked for shape only)."""
    return _open(Path(path), None, encoding).rows


def _names(names: list[str] | dict[str, None]) -> str:
    """Column names for a message: at most 20, each at most 40 characters."""
    names = list(names)
    shown = [repr(n) if not n else n if len(n) <= 40 else n[:37] + "..." for n in names[:20]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _suggest(name: str, names: list[str] | dict[str, None]) -> str:
    """"; did you mean 'X'?" for the closest name (case-insensitive difflib, ratio 0.7 or more), or ""."""
    folded = {n.casefold(): n for n in names if n}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.7)
    return f"; did you mean {folded[close[0]]!r}?" if close else ""


def _missing(where: str, role: str, name: str, names: list[str] | dict[str, None], hint: str = "") -> IngestError:
    """A missing-column error: the columns there are, the closest name, and how to set the right one."""
    suggestion = _suggest(name, names)
    fix = hint or f"{' S' if suggestion else '; s'}et the {role} column with {_FLAGS[role]} or pool.{role}_col"
    return _error(f"{where}: {role} column {name!r} is missing (columns: {_names(names)}){suggestion}{fix}")


def _check_header(source: _Source, wanted: list[tuple[str, str]]) -> None:
    """Every asked-for column is in the header, exactly once."""
    assert source.columns is not None
    for role, name in wanted:
        at = [str(i) for i, c in enumerate(source.columns, start=1) if c == name]
        if not at:
            raise _missing(source.where, role, name, source.columns, source.hint)
        if len(at) > 1:
            raise _error(
                f"{source.where}: {role} column {name!r} appears {len(at)} times in the header (columns"
                f" {', '.join(at)}); rename all but one"
            )


def _cell(path: Path, line: int, row: dict, column: str, *, required: bool) -> str | None:
    """A cell's stripped text; None for an absent or empty optional cell; an error for anything else."""
    if column not in row:
        if required:
            suggestion = _suggest(column, row)
            raise _error(
                f"{path}:{line}: column {column!r} is missing (columns: {_names(list(row))}){suggestion}"
                f"{' E' if suggestion else '; e'}very line needs the text column (set it with --text-col or"
                " pool.text_col)"
            )
        return None
    value = row[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            null = " (null)" if value is None else ""
            raise _error(f"{path}:{line}: column {column!r} is empty{null}; fill it in or delete the row")
        return None
    if not isinstance(value, str):
        raise _error(
            f"{path}:{line}: column {column!r} is not text ({type(value).__name__}: {value!r:.40}); write it as a"
            " string"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON "\ud800" escape: SQLite cannot store it
        bad = value[exc.start]
        raise _error(
            f"{path}:{line}: column {column!r} holds an unpaired surrogate {bad!r}; fix the \\u escape"
        ) from None
    return value.strip()


def _columns(value: str | Sequence[str] | None) -> list[str]:
    """A column setting as a list: None is none, a string is one column, a list is several."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(dict.fromkeys(value))


def _values(path: Path, line: int, row: dict, column: str, sep: str | None) -> list[str]:
    """The non-empty texts of an optional cell: a JSON list of strings gives one each, `sep` splits a string."""
    value = row.get(column)
    if isinstance(value, list):  # JSONL / Parquet: several references or groups in one cell
        cells = [_cell(path, line, {column: v}, column, required=False) for v in value]
        return list(dict.fromkeys(c for c in cells if c is not None))
    cell = _cell(path, line, row, column, required=False)
    if cell is None:
        return []
    parts = cell.split(sep) if sep else [cell]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def read_pool(
    path: str | Path,
    *,
    text_col: str = "text",
    reference_col: str | Sequence[str] | None = None,
    group_col: str | Sequence[str] | None = None,
    encoding: str | None = None,
    group_sep: str | None = None,
) -> PoolFile:
    """Validate a whole pool file; `encoding` None: a byte-order mark's, else strict UTF-8 (Parquet: unused).

    Several reference or group columns may be named; a text repeated in the file is one item that keeps
    every distinct reference and group of its rows (`merged` counts such rows), never only the first's.
    """
    path = Path(path)
    references, groups = _columns(reference_col), _columns(group_col)
    wanted = [("text", text_col)] + [("reference", c) for c in references] + [("group", c) for c in groups]
    source = _open(path, [name for _, name in wanted], encoding)
    if source.columns is not None:
        _check_header(source, wanted)
    rows: list[dict] = []
    by_norm: dict[str, dict] = {}
    duplicates = merged = 0
    for line, raw in source.rows:
        text = _cell(path, line, raw, text_col, required=True)
        assert text is not None
        refs = list(dict.fromkeys(v for c in references for v in _values(path, line, raw, c, None)))
        subgroups = list(dict.fromkeys(v for c in groups for v in _values(path, line, raw, c, group_sep)))
        norm = normalise(text)
        first = by_norm.get(norm)
        if first is not None:
            new_refs = [r for r in refs if r not in first["references"]]
            new_groups = [g for g in subgroups if g not in first["subgroups"]]
            if new_refs or new_groups:
                first["references"] += new_refs
                first["subgroups"] += new_groups
                merged += 1
            else:
                duplicates += 1
            continue
        row = {"text": text, "norm": norm, "references": refs, "subgroups": subgroups, "source": path.name,
               "line": line}
        by_norm[norm] = row
        rows.append(row)
    if not rows:
        what = "the file holds a header and no rows" if source.columns is not None else "the file holds no rows"
        raise _error(f"{path}: no rows to ingest: {what}")
    if source.columns is None:  # JSONL: an optional column may be absent from some lines, not from all
        for role, name in wanted[1:]:
            if name not in source.keys:
                raise _missing(f"{path}", role, name, source.keys)
    for row in rows:  # the first reference and group stay the item's own: the teacher replays that one
        row["reference"] = row["references"][0] if row["references"] else None
        row["subgroup"] = row["subgroups"][0] if row["subgroups"] else None
    return PoolFile(rows, duplicates, source.encoding, source.delimiter, merged)


def parse_pool(
    path: str | Path,
    *,
    text_col: str = "text",
    reference_col: str | Sequence[str] | None = None,
    group_col: str | Sequence[str] | None = None,
    encoding: str | None = None,
    group_sep: str | None = None,
) -> tuple[list[dict], int]:
    """Validate a whole pool file and return (rows, duplicates within the file)."""
    pool = read_pool(path, text_col=text_col, reference_col=reference_col, group_col=group_col, encoding=encoding,
                     group_sep=group_sep)
    return pool.rows, pool.duplicates


class _DryRun(Exception):
    """Raised inside the ingest transaction to roll back what a dry run stored; carries the counts."""


def ingest(
    ledger: Ledger,
    path: str | Path,
    *,
    text_col: str = "text",
    reference_col: str | Sequence[str] | None = None,
    group_col: str | Sequence[str] | None = None,
    encoding: str | None = None,
    group_sep: str | None = None,
    replace: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Validate the whole file, then store it in one transaction; counts, plus `encoding`/`delimiter` if unusual.

    `replace` makes the pool what the file says (the repair for a file ingested with the wrong columns):
    stored texts take the file's references and groups, texts not in the file go, except those already
    sent to Label Studio, which stay with their verifications. `dry_run` counts without storing.
    """
    pool = read_pool(path, text_col=text_col, reference_col=reference_col, group_col=group_col, encoding=encoding,
                     group_sep=group_sep)
    try:
        with ledger.transaction():
            stored = ledger.replace_pool(pool.rows) if replace else ledger.merge_pool(pool.rows)
            if dry_run:
                raise _DryRun(stored)
    except _DryRun as done:
        stored = done.args[0]
    counts: dict[str, Any] = {"read": len(pool.rows) + pool.duplicates + pool.merged}
    if replace:
        counts.update({k: stored[k] for k in ("added", "updated", "unchanged", "removed", "kept")})
        counts.update(merged=pool.merged, duplicates=pool.duplicates)
    else:
        counts.update(added=stored["added"], merged=pool.merged + stored["enriched"],
                      duplicates=pool.duplicates + stored["unchanged"])
    counts.update(references=stored["references"], groups=stored["groups"])
    if pool.encoding not in (None, "utf-8"):
        counts["encoding"] = pool.encoding
    if pool.delimiter is not None:
        counts["delimiter"] = pool.delimiter
    return counts
