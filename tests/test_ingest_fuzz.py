"""Fuzzed pool files: `ingest` stores the rows or raises a one-line IngestError and stores nothing; nothing else."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop.ingest import IngestError, ingest
from loop.ledger import Ledger

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet"]
# what breaks delimited and JSON text: quotes, delimiters, line breaks, NUL, a BOM, braces, escapes
TROUBLE = ['"', '""', ",", ";", "\t", "|", "\n", "\r", "\r\n", "\x00", "\ufeff", " ", "{", "}", "[", ":", "\\",
           "\\ud800", "null", "é", "\u2028"]


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, Path]:
    """One ledger (holding one item) and a folder for the fuzzed files, shared by every example."""
    folder = tmp_path_factory.mktemp("fuzz")
    ledger = Ledger(folder / "ledger.sqlite")
    ledger.add_pool([{"text": "kept", "norm": "kept"}])
    return ledger, folder


def check(place: tuple[Ledger, Path], suffix: str, data: bytes, **kw: str | None) -> None:
    """Ingest `data` as a file with `suffix`: success adds what it says, an IngestError adds nothing."""
    ledger, folder = place
    path = folder / f"pool{suffix}"
    path.write_bytes(data)
    before = ledger.pool_count()
    try:
        counts = ingest(ledger, path, **kw)
    except IngestError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        assert ledger.pool_count() == before
    else:
        assert ledger.pool_count() == before + counts["added"]
        assert counts["read"] == counts["added"] + counts["merged"] + counts["duplicates"] >= 1


def corrupt(text: str, edits: list[tuple[float, int, str]]) -> str:
    """`text` with each edit applied: at a relative position, delete `cut` characters and insert a string."""
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut:]
    return text


EDITS = st.one_of(st.just([]), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), st.sampled_from(TROUBLE)),
                                        max_size=6))
CELLS = st.one_of(st.text(max_size=12), st.sampled_from(["hello", "a, b", 'say "hi"', "x\ny", " ", "héllo"]))
HEADER = ["text", "reference", "group"]


@st.composite
def table(draw: st.DrawFn) -> list[list[str]]:
    """A header and rows: mostly the usual three columns with rows that fit, sometimes anything."""
    if draw(st.booleans()):
        header = HEADER
        rows = draw(st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=6))
    else:
        header = draw(st.lists(st.sampled_from([*HEADER, "Text", "", "note"]), min_size=1, max_size=4))
        rows = draw(st.lists(st.lists(CELLS, max_size=5), max_size=6))
    return [header, *rows]


@FUZZ
@given(
    suffix=st.sampled_from(SUFFIXES),
    data=st.binary(max_size=300),
    encoding=st.sampled_from([None, None, None, "utf-8", "latin-1", "utf-16", "cp1252"]),
)
def test_arbitrary_bytes(place: tuple[Ledger, Path], suffix: str, data: bytes, encoding: str | None):
    check(place, suffix, data, encoding=encoding)


@FUZZ
@given(
    suffix=st.sampled_from([".csv", ".tsv"]),
    delimiter=st.sampled_from([",", ",", ";", "\t", "|"]),
    rows=table(),
    edits=EDITS,
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-be", "cp1252"]),
    cut=st.sampled_from([0, 0, 0, 1, 2, 3]),
    columns=st.sampled_from([{}, {"reference_col": "reference"}, {"group_col": "group", "reference_col": "ref"}]),
)
def test_delimited_text_corrupted(place: tuple[Ledger, Path], suffix: str, delimiter: str, rows: list[list[str]],
                                  edits: list, encoding: str, cut: int, columns: dict):
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    data = corrupt(out.getvalue(), edits).encode(encoding, errors="replace")
    check(place, suffix, data[: len(data) - cut], **columns)


JSON_VALUES = st.one_of(CELLS, CELLS, st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
                        st.lists(CELLS, max_size=2), st.dictionaries(CELLS, CELLS, max_size=2))
JSON_LINES = st.lists(
    st.one_of(st.fixed_dictionaries({"text": CELLS}, optional={"reference": JSON_VALUES, "group": CELLS}),
              st.dictionaries(st.sampled_from([*HEADER, "Text", "body"]), JSON_VALUES, max_size=4), JSON_VALUES),
    max_size=6,
)


@FUZZ
@given(
    lines=JSON_LINES,
    edits=EDITS,
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]),
    columns=st.sampled_from([{}, {"reference_col": "reference"}, {"group_col": "group"}]),
)
def test_jsonl_text_corrupted(place: tuple[Ledger, Path], lines: list, edits: list, encoding: str, columns: dict):
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    check(place, ".jsonl", corrupt(text, edits).encode(encoding, errors="replace"), **columns)
