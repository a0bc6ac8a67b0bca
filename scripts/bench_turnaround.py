"""P6, the round turnaround: from the last verification of a round to the next batch imported, with its
breakdown (train, generate, score, select, distill, import); figures go to BENCHMARKS.md.

    .venv/bin/python scripts/bench_turnaround.py --pool 10000                       # the starter
    .venv/bin/python scripts/bench_turnaround.py --pool 10000 --cap 250             # select.candidates_per_cluster
    .venv/bin/python scripts/bench_turnaround.py --pool 100000 --cap 500 --extrapolate
    .venv/bin/python scripts/bench_turnaround.py --pool 10000 --shape flan-t5-base --cap 25 --extrapolate
    .venv/bin/python scripts/bench_turnaround.py --pool 10000 --engine ray          # pool compute on Ray

The loop's own steps run on a fresh ledger: `rounds.train_round` (fine-tune on round 1's verified pairs,
gate, promote, convert for ct2), `select_round` (the new learner generates an interim output for every
unsent item, R scores it, the strategy selects), `distill_round` (the tests' local OpenAI-compatible
server, answering after --teacher-latency seconds, concurrency 8) and `import_round` (the in-memory
Label Studio of tests/support; a real one imports 40 tasks in about 0.1 s, see notes). The scheduler's
poll interval (scheduler.poll_seconds, 5 s) that notices the last verification is not included.

The pool: the bundled ParaDetox rows (data/paradetox pool.tsv then starter.tsv: 5,000 texts), then, past
those, pairs of them: item j joins texts a and b (and their references) with a space, (a, b) drawn by a
seeded generator without repeats, so 100,000 distinct items exist. Paired items are about twice as long.
Round 1 (not timed) is 40 random items, distilled, imported and accepted. Embeddings are random unit
vectors (embedding happens once at ingest, not in P6; KMeans then clusters them): what is timed does not
depend on them.

`--shape flan-t5-base` is FLAN-T5-base's architecture with random weights (scripts/bench_scoring.py);
random weights never emit EOS, so every item decodes the full --max-target-tokens. `--extrapolate`
with `--cap M` reports, beside the capped P6, the full method's P6 from the per-item generate + score
time of the sample times the unsent pool: a sample measured, the rest computed, said so in the output.

`--engine ray` runs generation and R on a private local Ray (engine.actors one-CPU actors). As in a running
scheduler, whose actors stay warm from earlier rounds, the untimed set-up starts them: it scores round 1's
items with the first learner. Generation and scoring then happen inside the actors, so the breakdown
reports them together under `select` (generate_s and score_s are null).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_scoring import POOL, STARTER_DATA, STARTER_MODEL, _rows, build_base_shape  # noqa: E402


def pool_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (text, reference) rows: the bundled rows, then seeded pairs of them (see the docstring)."""
    import numpy as np

    base = [(r["text"], r["reference"]) for r in _rows(POOL) + _rows(STARTER_DATA)]
    rows, seen = list(base[:n]), {t for t, _ in base[:n]}
    rng = np.random.default_rng(seed)
    while len(rows) < n:
        for a, b in rng.integers(0, len(base), size=(n - len(rows), 2)):
            text = f"{base[a][0]} {base[b][0]}"
            if a != b and text not in seen:
                seen.add(text)
                rows.append((text, f"{base[a][1]} {base[b][1]}"))
    return rows[:n]


class Clock:
    """Seconds spent per named part; `learner.generate` and R's `score_texts` are wrapped to time them."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    def wrap(self, module, attr: str, name: str) -> None:
        real = getattr(module, attr)

        def timed(*args, **kwargs):
            with self.part(name):
                out = real(*args, **kwargs)
            self.counts[name] = self.counts.get(name, 0) + len(out)
            return out

        setattr(module, attr, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--shape", choices=("starter", "flan-t5-base"), default="starter")
    parser.add_argument("--cap", type=int, default=None, help="select.candidates_per_cluster (M); default: off")
    parser.add_argument("--extrapolate", action="store_true",
                        help="with --cap: also report the uncapped P6 from the sample's per-item rate")
    parser.add_argument("--runtime", default=None, help="learner.runtime (default: the settings' default)")
    parser.add_argument("--max-target-tokens", type=int, default=None,
                        help="default: the settings' (128) for the starter, 24 for flan-t5-base")
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="engine.kind")
    parser.add_argument("--teacher-latency", type=float, default=1.0)
    parser.add_argument("--base-dir", default=str(Path(tempfile.gettempdir()) / "labelloop-bench-base"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.extrapolate and args.cap is None:
        parser.error("--extrapolate needs --cap")

    from loop import threads

    threads.configure()
    import numpy as np

    from loop import learner, rounds, scorer
    from loop.config import load_settings
    from loop.ingest import ingest
    from loop.ledger import Ledger
    from tests.support.memstudio import MemStudio
    from tests.support.openai_server import FakeOpenAI

    model = str(STARTER_MODEL) if args.shape == "starter" else str(build_base_shape(Path(args.base_dir)))
    tokens = args.max_target_tokens or (24 if args.shape == "flan-t5-base" else None)
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="bench-turnaround-") as tmp, \
            FakeOpenAI(latency=args.teacher_latency) as server:
        os.environ["OPENAI_API_KEY"] = "sk-bench-not-secret"
        t_setup = time.perf_counter()
        pool = Path(tmp) / "pool.tsv"
        with pool.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(["text", "reference"])
            w.writerows(pool_rows(args.pool))
        overrides = {"learner__max_target_tokens": tokens} if tokens else {}
        if args.runtime:
            overrides["learner__runtime"] = args.runtime
        settings = load_settings(
            data_dir=str(Path(tmp) / "proj"), pool__path=str(pool), learner__base_model=model,
            learner__instruction=False, teacher__kind="openai", teacher__base_url=server.base_url,
            teacher__model="gpt-4o", select__budget=args.budget, cluster__k=args.k,
            select__candidates_per_cluster=args.cap, engine__kind=args.engine, **overrides)
        ledger = Ledger(settings.ledger_path)
        ingest(ledger, pool, text_col="text", reference_col="reference")
        ids = ledger.ids_without_embedding(settings.embed.model)
        vectors = np.random.default_rng(0).standard_normal((len(ids), 384)).astype(np.float32)
        ledger.put_embeddings(settings.embed.model, ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        studio = MemStudio()
        project = studio.ensure_project("bench", settings.label_config_path.read_text())
        ctx = rounds.Context(settings, ledger, studio, project_id=project)
        clusters = rounds.prepare_pool(ctx)
        v0 = rounds.current_learner(ctx)
        learner.load(model)  # the process has the model loaded already, as the scheduler does
        # round 1, not timed: random items, distilled, imported, every draft accepted
        rng = np.random.default_rng(1)
        first = [int(i) for i in rng.choice(sorted(clusters), size=args.budget, replace=False)]
        r1 = ledger.create_round(strategy=settings.select.strategy, budget=args.budget, learner_version=v0["version"],
                                 items=[{"pool_id": i, "cluster": clusters[i], "score": 0.0, "interim": ""}
                                        for i in first])
        rounds.distill_round(ctx, r1)
        rounds.import_round(ctx, r1)
        ledger.record_verifications([
            {"annotation_id": b["task_id"], "task_id": b["task_id"], "round_id": r1, "pool_id": b["pool_id"],
             "verdict": "accept", "target": b["draft"], "updated_at": "2026-01-01T00:00:00"}
            for b in ledger.batch(r1) if b["task_id"]])
        if args.engine == "ray":  # a running scheduler's actors are warm: earlier rounds started them
            rounds.score_candidates(ctx, first, v0)
        setup_s = time.perf_counter() - t_setup

        clock = Clock()
        clock.wrap(learner, "generate", "generate")
        clock.wrap(scorer, "score_texts", "score")  # the engine calls R through loop.scorer
        t0 = time.perf_counter()
        with clock.part("train"):
            version = rounds.train_round(ctx, r1)
        with clock.part("select_all"):
            r2 = rounds.select_round(ctx)
        with clock.part("distill"):
            rounds.distill_round(ctx, r2)
        with clock.part("import"):
            imported = rounds.import_round(ctx, r2)
        p6 = time.perf_counter() - t0
    parts = clock.parts
    select_only = parts["select_all"] - parts.get("generate", 0.0) - parts.get("score", 0.0)
    scored = clock.counts.get("score", 0)
    unsent = args.pool - args.budget
    result = {
        "pool": args.pool, "shape": args.shape, "engine": args.engine, "runtime": settings.learner.runtime,
        "cap": args.cap,
        "max_target_tokens": settings.learner.max_target_tokens, "threads": threads.count(),
        "learner": version, "scored": scored, "imported": imported, "p6_s": round(p6, 2),
        "train_s": round(parts["train"], 2), "generate_s": round(parts.get("generate", 0.0), 2),
        "score_s": round(parts.get("score", 0.0), 2), "select_s": round(select_only, 2),
        **({"generate_s": None, "score_s": None} if args.engine == "ray" else {}),
        "distill_s": round(parts["distill"], 2), "import_s": round(parts["import"], 2),
        "setup_s": round(setup_s, 1), "loadavg_before": load0,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }
    if args.extrapolate and scored:
        per_item = (parts.get("generate", 0.0) + parts.get("score", 0.0)) / scored
        result["extrapolated_uncapped_p6_s"] = round(p6 - per_item * scored + per_item * unsent, 1)
        result["extrapolated_generate_score_s"] = round(per_item * unsent, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
