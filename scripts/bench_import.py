"""Benchmark the bulk import of a batch with predictions into the local Label Studio, on SQLite and on
PostgreSQL: labelloop's import (`Studio.import_batch`) against a raw label-studio-sdk bulk import of the
same task payloads in one call, as the project's import makes it (goal P3: at most 1.1x, 0 predictions lost).

For each database a local Label Studio is started (loop/localstudio.py, `database=...`) in a fresh data
folder. Each repeat imports the batch into fresh projects, raw SDK and labelloop in alternating order,
once into an empty project and once more (new keys) into the project that already holds a batch: the
second is a later round, where labelloop first reads the project's keys to never import a task twice.
Predictions kept are Label Studio's own counter (`total_predictions_number`) after each import.

    .venv/bin/python scripts/bench_import.py [--n 10000] [--repeats 2] [--databases sqlite postgresql]
    .venv/bin/python scripts/bench_import.py --listing --databases postgresql   # the key read alone
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from label_studio_sdk import LabelStudio  # noqa: E402 (the raw baseline; loop/ only imports it in studio.py)

from loop import localstudio  # noqa: E402
from loop.studio import IMPORT_TIMEOUT_S, Studio, new_task_payloads  # noqa: E402

MODEL_VERSION = "bench"


def batch(n: int, tag: str) -> list[dict]:
    """n items in the form `import_batch` takes, with texts and drafts from the bundled pool (cycled)."""
    with open(ROOT / "data/paradetox/pool.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"key": f"{tag}-{i}", "text": rows[i % len(rows)]["text"], "draft": rows[i % len(rows)]["reference"],
             "score": round((i * 7919 % 1000) / 1000, 3), "meta": {"cluster": i % 8, "round": 1}}
            for i in range(n)]


def raw_import(ls: LabelStudio, project: int, payloads: list[dict]) -> float:
    t0 = time.perf_counter()
    resp = ls.projects.import_tasks(id=project, request=payloads, return_task_ids=True, commit_to_project=True,
                                    request_options={"max_retries": 0, "timeout": IMPORT_TIMEOUT_S})
    elapsed = time.perf_counter() - t0
    assert resp.task_count == len(payloads), resp
    return elapsed


def project_import(studio: Studio, project: int, items: list[dict]) -> float:
    t0 = time.perf_counter()
    ids = studio.import_batch(project, items, MODEL_VERSION)
    elapsed = time.perf_counter() - t0
    assert len(ids) == len(items)
    return elapsed


def bench(database: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    config = (ROOT / "label_config/style_transfer.xml").read_text(encoding="utf-8")
    rows = []
    with localstudio.running(folder / database, port=args.port, venv_dir=ROOT / ".venv-ls", database=database,
                             postgres_port=args.pg_port, timeout=600) as server:
        studio = Studio(server.url, server.token)
        ls = LabelStudio(base_url=server.url, api_key=server.token, timeout=IMPORT_TIMEOUT_S)
        for r in range(args.repeats):
            order = ("raw", "labelloop") if r % 2 == 0 else ("labelloop", "raw")
            for way in order:
                project = studio.ensure_project(f"bench {database} {way} {r}", config)
                for step in ("empty", "second"):
                    items = batch(args.n, f"{way}-{r}-{step}")
                    before = studio.counts(project)["total_predictions_number"]
                    if way == "raw":
                        seconds = raw_import(ls, project, new_task_payloads(items, {}, MODEL_VERSION))
                    else:
                        seconds = project_import(studio, project, items)
                    kept = studio.counts(project)["total_predictions_number"] - before
                    row = {"database": database, "repeat": r, "way": way, "project": step, "n": args.n,
                           "seconds": round(seconds, 2), "predictions_kept": kept}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def listing(database: str, args: argparse.Namespace, folder: Path) -> None:
    """What a later round's import reads before importing: the tasks of its own keys (filtered by Label Studio)
    in a project holding n tasks of other keys, 3 times; and, for comparison, every task of the project."""
    config = (ROOT / "label_config/style_transfer.xml").read_text(encoding="utf-8")
    with localstudio.running(folder / database, port=args.port, venv_dir=ROOT / ".venv-ls", database=database,
                             postgres_port=args.pg_port, timeout=600) as server:
        studio = Studio(server.url, server.token)
        project = studio.ensure_project(f"bench {database} listing", config)
        studio.import_batch(project, batch(args.n, "first"), MODEL_VERSION)
        wanted = {item["key"] for item in batch(args.n, "second")}
        for _ in range(3):
            t0 = time.perf_counter()
            found = len(studio._key_copies(project, wanted))
            print(f"{database}: read the keys of the next batch: {found} tasks in {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        found = len(studio._key_copies(project))
        print(f"{database}: read every task's key: {found} tasks in {time.perf_counter() - t0:.2f} s", flush=True)


def summary(rows: list[dict]) -> str:
    lines = ["| database | project | raw SDK (s) | labelloop (s) | ratio | predictions kept (raw / labelloop) |",
             "|---|---|---|---|---|---|"]
    for database in dict.fromkeys(r["database"] for r in rows):
        for step in ("empty", "second"):
            picked = [r for r in rows if r["database"] == database and r["project"] == step]
            raw = statistics.median(r["seconds"] for r in picked if r["way"] == "raw")
            ours = statistics.median(r["seconds"] for r in picked if r["way"] == "labelloop")
            kept = {w: min(r["predictions_kept"] for r in picked if r["way"] == w) for w in ("raw", "labelloop")}
            n = picked[0]["n"]
            lines.append(f"| {database} | {step} | {raw:.2f} | {ours:.2f} | {ours / raw:.2f}x"
                         f" | {kept['raw']:,} / {kept['labelloop']:,} of {n:,} (fewest of the repeats) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks per import")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--port", type=int, default=8092, help="Label Studio's port on 127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL's port (default: a free one)")
    parser.add_argument("--listing", action="store_true", help="only time the key read that precedes an import")
    args = parser.parse_args()
    # not pytest's or the user's folder: run as root, PostgreSQL runs as the postgres user, who must reach it
    folder = Path(tempfile.mkdtemp(prefix="labelloop-bench-import-"))
    folder.chmod(0o755)
    print("loadavg before:", Path("/proc/loadavg").read_text().strip(), flush=True)
    try:
        if args.listing:
            for database in args.databases:
                listing(database, args, folder)
        else:
            rows = [row for database in args.databases for row in bench(database, args, folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("loadavg after:", Path("/proc/loadavg").read_text().strip())
    if not args.listing:
        print(summary(rows))


if __name__ == "__main__":
    main()
