"""Ingest: every file type, de-duplication, errors that name file, line and column, all-or-nothing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loop.ingest import IngestError, ingest, normalise
from loop.ledger import Ledger

ROWS = [
    {"body": "You are an idiot", "ref": "You are wrong", "grp": "a"},
    {"body": "  you ARE   an idiot ", "ref": "dup", "grp": "a"},
    {"body": "What a stupid take", "ref": "", "grp": "b"},
]


def write(tmp_path, kind, rows):
    path = tmp_path / f"pool.{kind}"
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        lines = [sep.join(rows[0])] + [sep.join(f'"{v}"' if kind == "csv" else v for v in r.values()) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.sqlite")


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_each_format_ingests_with_columns_and_dedup(tmp_path, ledger, kind):
    counts = ingest(ledger, write(tmp_path, kind, ROWS), text_col="body", reference_col="ref", group_col="grp")
    # the repeated text brings a second reference: merged into the first item, not dropped
    assert counts == {"read": 3, "added": 2, "merged": 1, "duplicates": 0, "references": 2, "groups": 2}
    items = ledger.pool_items()
    assert [(i["text"], i["reference"], i["subgroup"]) for i in items] == [
        ("You are an idiot", "You are wrong", "a"),
        ("What a stupid take", None, "b"),
    ]
    assert ledger.references() == {items[0]["id"]: ["You are wrong", "dup"]}
    assert ledger.memberships() == {items[0]["id"]: ["a"], items[1]["id"]: ["b"]}
    # a second ingest of the same file adds nothing
    assert ingest(ledger, write(tmp_path, kind, ROWS), text_col="body")["added"] == 0


def test_normalise_folds_case_and_space():
    assert normalise("  You\tARE \n an idiot ") == "you are an idiot"


@pytest.mark.parametrize(
    "kind, bad_row, message",
    [
        ("csv", {"body": "", "ref": "x", "grp": "a"}, "pool.csv:3: column 'body' is empty"),
        ("tsv", {"body": "  ", "ref": "x", "grp": "a"}, "pool.tsv:3: column 'body' is empty"),
        ("jsonl", {"body": 42, "ref": "x", "grp": "a"}, "pool.jsonl:2: column 'body' is not text (int: 42)"),
        ("jsonl", {"ref": "x", "grp": "a"}, "pool.jsonl:2: column 'body' is missing"),
        ("parquet", {"body": None, "ref": "x", "grp": "a"}, "pool.parquet:2: column 'body' is empty"),
    ],
)
def test_a_bad_row_names_file_line_and_column_and_stores_nothing(tmp_path, ledger, kind, bad_row, message):
    ledger.add_pool([{"text": "kept", "norm": "kept"}])
    path = write(tmp_path, kind, [ROWS[0], bad_row, ROWS[2]])
    with pytest.raises(IngestError) as err:
        ingest(ledger, path, text_col="body")
    assert message in str(err.value)
    assert [i["text"] for i in ledger.pool_items()] == ["kept"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("pool.jsonl", '{"body": "ok"}\n{not json}\n', "pool.jsonl:2: not valid JSON"),
        ("pool.jsonl", '["a list"]\n', "pool.jsonl:1: expected a JSON object, got list"),
        ("pool.csv", "", "pool.csv: the file is empty"),
        ("pool.csv", "body\na,b\n", "pool.csv:2: more cells than the header has columns"),
        ("pool.xlsx", "x", "unknown file type '.xlsx'"),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path, ledger, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(IngestError, match=message):
        ingest(ledger, path, text_col="body")
    assert ledger.pool_count() == 0


def test_bundled_sample_ingests_cleanly(ledger):
    counts = ingest(ledger, "data/paradetox/pool.tsv", text_col="text", reference_col="reference")
    assert counts["added"] == 3000 and counts["duplicates"] == 0


def test_a_failed_first_init_leaves_no_ledger_and_a_fixed_one_works(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from loop.cli import main

    bad = tmp_path / "pool.csv"
    bad.write_text("txt,reference\nhello,x\n")
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LABELLOOP_POOL__PATH", str(bad))
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 1 and "text column 'text' is missing" in result.output
    assert not (tmp_path / "data" / "ledger.sqlite").exists()
    bad.write_text("text,reference\nhello,x\n")
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0 and "read 1, added 1" in result.output


def test_the_cli_says_when_a_file_was_read_with_another_delimiter_or_encoding(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from loop.cli import main

    path = tmp_path / "sheet.csv"
    path.write_bytes(b"\xef\xbb\xbftext;reference\nyou fool;please reconsider\n")
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(main, ["ingest", str(path)])
    assert result.exit_code == 0 and "added 1, duplicates 0, encoding 'utf-8-sig', delimiter ';'" in result.output
