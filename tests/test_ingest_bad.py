"""Pool files no one here prepared: one clear line naming where and what to do and nothing stored, or read right."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from loop.ingest import IngestError, ingest, parse_pool
from loop.ledger import Ledger

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover (pyarrow is a dependency; the Parquet cases skip without it)
    pa = pq = None

needs_pyarrow = pytest.mark.skipif(pq is None, reason="pyarrow is not installed")


def _parquet_table(table: object) -> bytes:
    """The bytes of a Parquet file holding `table`."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def parquet(rows: list[dict]) -> bytes:
    """The bytes of a Parquet file holding `rows` (empty bytes without pyarrow: those cases skip)."""
    return b"" if pq is None else _parquet_table(pa.Table.from_pylist(rows))


H = b"text,reference,group\n"
RG = {"reference_col": "reference", "group_col": "group"}
ENC = ("pass its encoding, e.g. --encoding cp1252 (Excel on Windows) or --encoding latin-1"
       " (pool.encoding in the settings)")
QUOTE = 'close it, and write a quote inside a quoted cell as ""'
JSONL = 'each line must be one JSON object, like {"text": "..."}'
ARRAY = "(a JSON array of objects is not JSON Lines)"
SET_REF = "Set the reference column with --reference-col or pool.reference_col"
SEPARATED = "save it comma-separated as .csv or tab-separated as .tsv"


def bad(case: str, name: str, data: bytes, message: str | re.Pattern, **kw: str) -> object:
    """One row of the table: `message` is exact (PATH stands for the file) or a pattern for the whole line."""
    marks = needs_pyarrow if name.endswith(".parquet") else ()
    return pytest.param(name, data, kw, message, id=case, marks=marks)


BAD = [
    # encodings
    bad("latin1", "pool.csv", "text\ncafé au lait\n".encode("latin-1"),
        f"PATH:2: not valid utf-8 (byte 0xe9 at offset 8); save it as UTF-8 or {ENC}"),
    bad("cp1252", "pool.csv", "text,reference\n“smart quotes”,x\n".encode("cp1252"),
        f"PATH:2: not valid utf-8 (byte 0x93 at offset 15); save it as UTF-8 or {ENC}"),
    bad("latin1-jsonl", "pool.jsonl", '{"text": "ok"}\n{"text": "née"}\n'.encode("latin-1"),
        f"PATH:2: not valid utf-8 (byte 0xe9 at offset 26); save it as UTF-8 or {ENC}"),
    bad("utf16le-without-bom", "pool.csv", "text\nhello\n".encode("utf-16-le"),
        "PATH:1: NUL character (byte offset 1); it looks like UTF-16 without a byte-order mark:"
        " pass --encoding utf-16-le (pool.encoding)"),
    bad("utf16be-without-bom", "pool.csv", "text\nhello\n".encode("utf-16-be"),
        "PATH:1: NUL character (byte offset 0); it looks like UTF-16 without a byte-order mark:"
        " pass --encoding utf-16-be (pool.encoding)"),
    bad("utf16-bom-cut-short", "pool.csv", b"\xff\xfe" + "text\nhi\n".encode("utf-16-le") + b"x",
        "PATH:3: not valid utf-16-le (byte 0x78 at offset 18); the byte-order mark says utf-16-le, but the file"
        " is not (or is cut short): export it again"),
    bad("unknown-encoding", "pool.csv", b"text\nhello\n",
        "PATH: unknown text encoding 'utf-99'; use one Python knows, e.g. 'utf-8', 'cp1252', 'latin-1' or"
        " 'utf-16'", encoding="utf-99"),
    bad("wrong-encoding-named", "pool.csv", "text\nhéllo\n".encode("latin-1"),
        f"PATH:2: not valid utf-8 (byte 0xe9 at offset 6); it is not in that encoding: {ENC}", encoding="utf-8"),
    bad("nul-byte", "pool.csv", b"text\nhel\x00lo\n",
        "PATH:2: NUL character (byte offset 8); a pool file is text: remove it, or export the file again"),
    bad("binary", "pool.tsv", bytes(range(256)),
        f"PATH:2: not valid utf-8 (byte 0x80 at offset 128); save it as UTF-8 or {ENC}"),
    # delimiters
    bad("semicolon-ragged-row", "pool.csv", b"text;reference\nhello;x\nbye; see you;y\n",
        "PATH:3: more cells than the header has columns (3 cells, 2 columns); quote cells that contain a"
        " semicolon (read as semicolon-separated)"),
    bad("semicolon-and-pipe", "pool.csv", b"text;reference|group\na;b|c\n",
        "PATH:1: text column 'text' is missing (columns: text;reference|group); the header is one cell"
        f" containing ';': the file looks semicolon-separated or pipe-separated; {SEPARATED}"),
    bad("semicolon-in-tsv", "pool.tsv", b"text;reference\nhello;x\n",
        "PATH:1: text column 'text' is missing (columns: text;reference); the header is one cell containing"
        f" ';': the file looks semicolon-separated; {SEPARATED}"),
    bad("pipe-in-tsv", "pool.tsv", b"text|reference\nhello|x\n",
        "PATH:1: text column 'text' is missing (columns: text|reference); the header is one cell containing"
        f" '|': the file looks pipe-separated; {SEPARATED}"),
    bad("comma-in-tsv", "pool.tsv", b"text,reference\nhello,x\n",
        "PATH:1: text column 'text' is missing (columns: text,reference); the header is one cell containing"
        f" ',': the file looks comma-separated; {SEPARATED}"),
    # quotes
    bad("unclosed-quote", "pool.csv", b'text,reference\nfine,x\n"unclosed,y\nnext,z\n"third",w\nlast,v\n',
        f"PATH:3: unclosed quote: the quoted cell that starts on this line runs on to line 5; {QUOTE}"),
    bad("unclosed-quote-to-eof", "pool.csv", b'text,reference\nfine,x\n"unclosed,y\nnext,z\n',
        f"PATH:3: unclosed quote: the quoted cell that starts on this line runs on to the end of the file; {QUOTE}"),
    bad("unclosed-quote-last-line", "pool.csv", b'text,reference\nfine,x\n"unclosed,y',
        f"PATH:3: unclosed quote: the quoted cell that starts on this line runs on to the end of the file; {QUOTE}"),
    bad("unclosed-quote-in-header", "pool.csv", b'"text,reference\nhello,x\n',
        f"PATH:1: unclosed quote: the quoted cell that starts on this line runs on to the end of the file; {QUOTE}"),
    bad("stray-quote", "pool.csv", b'text,reference\nok,x\n"Hi" she said,y\n',
        'PATH:3: stray quote: text follows the closing quote of a quoted cell; quote the whole cell and write'
        ' each quote inside it as ""'),
    bad("quoted-cell-spanning-lines-with-extra-cell", "pool.csv", b'text,reference\n"two\nlines",x,extra\n',
        'PATH:2: unclosed quote? the row that starts here runs on to line 3 and has 3 cells, 2 columns;'
        f" {QUOTE}"),
    # ragged rows
    bad("short-row", "pool.csv", H + b"hello,x,a\nbye\n",
        "PATH:3: fewer cells than the header has columns (1 cell, 3 columns); give every row one cell per column",
        **RG),
    bad("short-row-unused-column", "pool.csv", H + b"hello,x\n",
        "PATH:2: fewer cells than the header has columns (2 cells, 3 columns); give every row one cell per column"),
    bad("long-row", "pool.csv", H + b"hello, world,x,a\n",
        "PATH:2: more cells than the header has columns (4 cells, 3 columns); quote cells that contain a comma"),
    bad("long-row-tsv", "pool.tsv", b"text\treference\nhello\tx\textra\n",
        "PATH:2: more cells than the header has columns (3 cells, 2 columns); quote cells that contain a tab"),
    # empty cells
    bad("empty-text", "pool.csv", H + b"hello,x,a\n,y,b\n",
        "PATH:3: column 'text' is empty; fill it in or delete the row"),
    bad("whitespace-text", "pool.csv", H + b"hello,x,a\n  \t ,y,b\n",
        "PATH:3: column 'text' is empty; fill it in or delete the row"),
    bad("empty-text-tsv", "pool.tsv", b"text\treference\n\tx\n",
        "PATH:2: column 'text' is empty; fill it in or delete the row"),
    bad("row-of-commas", "pool.csv", H + b",,\n", "PATH:2: column 'text' is empty; fill it in or delete the row"),
    # header
    bad("duplicate-text-column", "pool.csv", b"text,reference,text\na,b,c\n",
        "PATH:1: text column 'text' appears 2 times in the header (columns 1, 3); rename all but one"),
    bad("empty-header", "pool.csv", b",,\na,b,c\n",
        "PATH:1: the header row is empty; the first line must name the columns, e.g. text"),
    bad("misspelt-text", "pool.csv", H + b"hello,x,a\n",
        "PATH:1: text column 'txet' is missing (columns: text, reference, group); did you mean 'text'? Set the"
        " text column with --text-col or pool.text_col", text_col="txet"),
    bad("text-in-other-case", "pool.csv", b"Text,reference\nhello,x\n",
        "PATH:1: text column 'text' is missing (columns: Text, reference); did you mean 'Text'? Set the text"
        " column with --text-col or pool.text_col"),
    bad("misspelt-reference", "pool.csv", H + b"hello,x,a\n",
        "PATH:1: reference column 'refrence' is missing (columns: text, reference, group); did you mean"
        f" 'reference'? {SET_REF}", reference_col="refrence"),
    bad("misspelt-group", "pool.csv", H + b"hello,x,a\n",
        "PATH:1: group column 'groups' is missing (columns: text, reference, group); did you mean 'group'? Set"
        " the group column with --group-col or pool.group_col", group_col="groups"),
    bad("group-column-nothing-close", "pool.tsv", b"text\treference\thate_target\nhello\tx\ta\n",
        "PATH:1: group column 'target_group' is missing (columns: text, reference, hate_target); set the group"
        " column with --group-col or pool.group_col", group_col="target_group"),
    bad("empty-file", "pool.csv", b"", "PATH: the file is empty (no header row)"),
    bad("blank-lines-only", "pool.csv", b"\n\r\n\n", "PATH: the file is empty (no header row)"),
    bad("header-only", "pool.csv", H, "PATH: no rows to ingest: the file holds a header and no rows"),
    # JSON Lines
    bad("jsonl-bad-json", "pool.jsonl", b'{"text": "ok"}\n{text: "no quotes"}\n',
        f"PATH:2: not valid JSON (Expecting property name enclosed in double quotes at column 2); {JSONL}"),
    bad("jsonl-array-line", "pool.jsonl", b'{"text": "ok"}\n["a", "list"]\n',
        f"PATH:2: expected a JSON object, got list; {JSONL} {ARRAY}"),
    bad("jsonl-pretty-json-array", "pool.jsonl", b'[\n  {"text": "a"}\n]\n',
        f"PATH:1: not valid JSON (Expecting value at column 1); {JSONL} {ARRAY}"),
    bad("jsonl-string-line", "pool.jsonl", b'"just a string"\n',
        f"PATH:1: expected a JSON object, got string; {JSONL} {ARRAY}"),
    bad("jsonl-null-line", "pool.jsonl", b'{"text": "ok"}\nnull\n',
        f"PATH:2: expected a JSON object, got null; {JSONL} {ARRAY}"),
    bad("jsonl-null-text", "pool.jsonl", b'{"text": "ok"}\n{"text": null}\n',
        "PATH:2: column 'text' is empty (null); fill it in or delete the row"),
    bad("jsonl-number-text", "pool.jsonl", b'{"text": 42}\n',
        "PATH:1: column 'text' is not text (int: 42); write it as a string"),
    bad("jsonl-bool-text", "pool.jsonl", b'{"text": true}\n',
        "PATH:1: column 'text' is not text (bool: True); write it as a string"),
    bad("jsonl-object-text", "pool.jsonl", b'{"text": {"en": "hi"}}\n',
        "PATH:1: column 'text' is not text (dict: {'en': 'hi'}); write it as a string"),
    bad("jsonl-misspelt-text", "pool.jsonl", b'{"body": "hi"}\n{"txet": "bye"}\n',
        "PATH:1: column 'text' is missing (columns: body); every line needs the text column (set it with"
        " --text-col or pool.text_col)"),
    bad("jsonl-text-key-case", "pool.jsonl", b'{"Text": "hi"}\n',
        "PATH:1: column 'text' is missing (columns: Text); did you mean 'Text'? Every line needs the text column"
        " (set it with --text-col or pool.text_col)"),
    bad("jsonl-misspelt-reference", "pool.jsonl", b'{"text": "hi", "reference": "x"}\n{"text": "bye"}\n',
        f"PATH: reference column 'refrence' is missing (columns: text, reference); did you mean 'reference'? {SET_REF}",
        reference_col="refrence"),
    bad("jsonl-number-reference", "pool.jsonl", b'{"text": "hi", "reference": 3}\n',
        "PATH:1: column 'reference' is not text (int: 3); write it as a string", reference_col="reference"),
    bad("jsonl-lone-surrogate", "pool.jsonl", b'{"text": "bad \\ud800 escape"}\n',
        "PATH:1: column 'text' holds an unpaired surrogate '\\ud800'; fix the \\u escape"),
    bad("jsonl-nested-too-deep", "pool.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n",
        re.compile(r"PATH:1: cannot read this JSON \(maximum recursion depth exceeded[^)]*\); each line must be one"
                   r" JSON object")),
    bad("jsonl-5000-digit-number", "pool.jsonl", b'{"text": ' + b"1" * 5000 + b"}\n",
        re.compile(r"PATH:1: cannot read this JSON \(Exceeds the limit \(4300 digits\).*\); each line must be one"
                   r" JSON object")),
    bad("jsonl-blank-only", "pool.jsonl", b"\n  \n", "PATH: no rows to ingest: the file holds no rows"),
    # Parquet
    bad("parquet-missing-text", "pool.parquet", parquet([{"body": "hi", "ref": "x"}]),
        "PATH: text column 'text' is missing (columns: body, ref); set the text column with --text-col or"
        " pool.text_col"),
    bad("parquet-misspelt-reference", "pool.parquet", parquet([{"text": "hi", "reference": "x"}]),
        f"PATH: reference column 'refrence' is missing (columns: text, reference); did you mean 'reference'? {SET_REF}",
        reference_col="refrence"),
    bad("parquet-null-text", "pool.parquet", parquet([{"text": "ok"}, {"text": None}]),
        "PATH:2: column 'text' is empty (null); fill it in or delete the row"),
    bad("parquet-number-text", "pool.parquet", parquet([{"text": 7}]),
        "PATH:1: column 'text' is not text (int: 7); write it as a string"),
    bad("parquet-duplicate-text-column", "pool.parquet",
        parquet([]) if pa is None else _parquet_table(pa.table([["a"], ["b"]], names=["text", "text"])),
        "PATH: text column 'text' appears 2 times in the header (columns 1, 2); rename all but one"),
    bad("parquet-not-parquet", "pool.parquet", b"PAR1 this is not parquet",
        re.compile(r"PATH: not a readable Parquet file \(.*magic bytes.*\)")),
    bad("parquet-empty-file", "pool.parquet", b"", re.compile(r"PATH: not a readable Parquet file \(.*0 bytes.*\)")),
    bad("unknown-suffix", "pool.xlsx", b"PK\x03\x04",
        "PATH: unknown file type '.xlsx'; use .csv, .tsv, .jsonl or .parquet"),
]


def snapshot(db: Path) -> dict[str, bytes]:
    """The bytes of the ledger's SQLite file and its write-ahead log."""
    return {p.name: p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()}


@pytest.mark.parametrize(("name", "data", "kw", "message"), BAD)
def test_a_bad_file_is_one_clear_line_and_stores_nothing(tmp_path: Path, name: str, data: bytes, kw: dict,
                                                         message: str | re.Pattern):
    db = tmp_path / "ledger.sqlite"
    ledger = Ledger(db)
    ledger.add_pool([{"text": "kept", "norm": "kept"}])
    before = snapshot(db)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IngestError) as err:
        ingest(ledger, path, **kw)
    got = str(err.value)
    assert len(got.splitlines()) == 1
    if isinstance(message, re.Pattern):
        assert message.fullmatch(got.replace(str(path), "PATH")), got
    else:
        assert got == message.replace("PATH", str(path))
    assert ledger.pool_count() == 1 and [i["text"] for i in ledger.pool_items()] == ["kept"]
    assert snapshot(db) == before


def good(case: str, name: str, data: bytes, rows: list[tuple], extra: dict | None = None, **kw: str) -> object:
    """A file that is now read right: its (line, text, reference, subgroup) rows and extra counts."""
    return pytest.param(name, data, kw, rows, extra or {}, id=case)


HUGE = "word " * 100_000
GOOD = [
    good("latin1-named", "pool.csv", "text\ncafé au lait\n".encode("latin-1"), [(2, "café au lait", None, None)],
         {"encoding": "latin-1"}, encoding="latin-1"),
    good("cp1252-named", "pool.csv", "text,reference\n“smart”,x\n".encode("cp1252"), [(2, "“smart”", "x", None)],
         {"encoding": "cp1252"}, encoding="cp1252", reference_col="reference"),
    good("utf16le-bom", "pool.csv", b"\xff\xfe" + "text,reference\nhéllo,x\n".encode("utf-16-le"),
         [(2, "héllo", "x", None)], {"encoding": "utf-16-le"}, reference_col="reference"),
    good("utf16be-bom", "pool.tsv", b"\xfe\xff" + "text\treference\nhéllo\tx\n".encode("utf-16-be"),
         [(2, "héllo", "x", None)], {"encoding": "utf-16-be"}, reference_col="reference"),
    good("utf16-bom-jsonl", "pool.jsonl", b"\xff\xfe" + '{"text": "héllo"}\n'.encode("utf-16-le"),
         [(1, "héllo", None, None)], {"encoding": "utf-16-le"}),
    good("utf8-bom", "pool.csv", b"\xef\xbb\xbftext,reference\nhello,x\n", [(2, "hello", "x", None)],
         {"encoding": "utf-8-sig"}, reference_col="reference"),
    good("utf8-bom-utf8-named", "pool.csv", b"\xef\xbb\xbftext\nhello\n", [(2, "hello", None, None)], encoding="utf-8"),
    good("semicolon-csv", "pool.csv", b"text;reference;group\nhello, you;x;a\n\"semi;colon\";y;b\n",
         [(2, "hello, you", "x", "a"), (3, "semi;colon", "y", "b")], {"delimiter": ";"}, **RG),
    good("pipe-csv", "pool.csv", b"text|reference\nhello, you|x\nbye|y\n", [(2, "hello, you", "x", None),
                                                                             (3, "bye", "y", None)],
         {"delimiter": "|"}, reference_col="reference"),
    good("tab-in-csv", "pool.csv", b"text\treference\nhello, you\tx\n", [(2, "hello, you", "x", None)],
         {"delimiter": "\t"}, reference_col="reference"),
    good("excel-sep-line", "pool.csv", b"sep=;\r\ntext;reference\r\nhello, you;x\r\n", [(3, "hello, you", "x", None)],
         {"delimiter": ";"}, reference_col="reference"),
    good("quote-inside-unquoted-cell", "pool.csv", b'text,reference\nhe said "hi",x\n',
         [(2, 'he said "hi"', "x", None)], reference_col="reference"),
    good("doubled-quotes", "pool.csv", b'text\n"she said ""hi"", twice"\n', [(2, 'she said "hi", twice', None, None)]),
    good("cell-over-two-lines", "pool.csv", b'text,reference\n"two\nlines",x\nnext,y\n',
         [(2, "two\nlines", "x", None), (4, "next", "y", None)], reference_col="reference"),
    good("blank-and-space-lines", "pool.csv", H + b"\nhello,x,a\n   \n\n", [(3, "hello", "x", "a")], **RG),
    good("crlf", "pool.csv", b"text,reference\r\nhello,x\r\nbye,y\r\n",
         [(2, "hello", "x", None), (3, "bye", "y", None)], reference_col="reference"),
    good("huge-cell", "pool.csv", b"text,reference\n" + HUGE.encode() + b",x\n", [(2, HUGE.strip(), None, None)]),
    good("huge-quoted-cell", "pool.csv", b'text\n"' + b"a,\n" * 100_000 + b'"\n',
         [(2, ("a,\n" * 100_000).strip(), None, None)]),
    good("spaces-around-header-names", "pool.csv", b" text , reference\nhello,x\n", [(2, "hello", "x", None)],
         reference_col="reference"),
    good("duplicate-unused-column", "pool.csv", b"text,note,note\nhello,a,b\n", [(2, "hello", None, None)]),
    good("jsonl-reference-in-some-lines", "pool.jsonl", b'{"text": "hi", "reference": "x"}\n{"text": "bye"}\n',
         [(1, "hi", "x", None), (2, "bye", None, None)], reference_col="reference"),
]


@pytest.mark.parametrize(("name", "data", "kw", "rows", "extra"), GOOD)
def test_a_file_that_can_be_read_is_read_right(tmp_path: Path, name: str, data: bytes, kw: dict, rows: list[tuple],
                                               extra: dict):
    path = tmp_path / name
    path.write_bytes(data)
    parsed, duplicates = parse_pool(path, **kw)
    assert [(r["line"], r["text"], r["reference"], r["subgroup"]) for r in parsed] == rows
    ledger = Ledger(tmp_path / "ledger.sqlite")
    counts = ingest(ledger, path, **kw)
    assert counts == {"read": len(rows), "added": len(rows), "merged": 0, "duplicates": 0,
                      "references": sum(r[2] is not None for r in rows), "groups": sum(r[3] is not None for r in rows),
                      **extra}
    assert [(i["text"], i["reference"], i["subgroup"]) for i in ledger.pool_items()] == [r[1:] for r in rows]
