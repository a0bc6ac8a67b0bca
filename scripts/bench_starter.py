"""Does simulate's starter learn from a budget? Build a `--starter pool` starter (cached as simulate caches
it), fine-tune it once on N random pool pairs under several schedules, and score each on the test split
with simulate's own metrics and judge; figures go to BENCHMARKS.md.

    PYTHONPATH=. .venv/bin/python scripts/bench_starter.py                        # BART, 1,500 steps
    PYTHONPATH=. .venv/bin/python scripts/bench_starter.py --arch t5              # the T5 of the same shape
    PYTHONPATH=. .venv/bin/python scripts/bench_starter.py --steps 3000 --pairs 40 200

Each schedule fine-tunes with the learner's one code path (loop.learner.fine_tune through simulate's
`_fine_tune`); `refcopy` also trains on each reference copied to itself. Outputs are greedy, as in the loop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from loop import learner, metrics
from loop.simulate import SimConfig, _fine_tune, build_judge, build_starter, load_split
from loop.vocab import STARTER_ARCHS

SCHEDULES = {  # name: (lr, epochs, with each reference copied to itself)
    "simulate (lr 3e-4, 4 epochs)": (3e-4, 4, False),
    "lr 1e-4": (1e-4, 4, False),
    "lr 1e-3": (1e-3, 4, False),
    "10 epochs": (3e-4, 10, False),
    "refcopy": (3e-4, 4, True),
}


def main() -> None:
    """Build (or reuse) the starter, then print and return one row per (pairs, schedule)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/paradetox/pool.tsv")
    ap.add_argument("--arch", choices=STARTER_ARCHS, default="bart")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--pairs", type=int, nargs="+", default=[200])
    ap.add_argument("--seed", type=int, default=0, help="which random pool pairs, and fine-tuning's seed")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    cfg = SimConfig(data=args.data, starter="pool", starter_steps=args.steps, starter_width=args.width,
                    starter_arch=args.arch, progress=True)
    pool, test, _ = load_split(cfg)
    t = time.perf_counter()
    path, built = build_starter(cfg, [], pool)
    print(f"starter {path}: {built['parameters'] / 1e6:.1f} M parameters, loss {built['train_loss']}, built in"
          f" {built['seconds']} s" + (" (cached)" if built["cached"] else f" ({time.perf_counter() - t:.0f} s)"))
    judge, _ = build_judge(replace(cfg, progress=False))
    texts, refs = [r["text"] for r in test], [r["references"] for r in test]

    with tempfile.TemporaryDirectory(prefix="bench-starter-") as tmp:
        def score(model: str) -> dict:
            out = learner.generate(model, texts, batch_size=64, max_new_tokens=cfg.max_new_tokens,
                                   runtime=cfg.runtime, cache_dir=Path(tmp) / "ct2")
            got = metrics.evaluate(out, refs, judge(out), [0] * len(out), judge_threshold=cfg.judge_threshold,
                                   chrf_threshold=cfg.chrf_threshold)
            length = float(np.mean([len(o) / max(1, len(x)) for o, x in zip(out, texts, strict=True)]))
            return {"chrf": round(got["chrf"], 2), "offensive_pct": round(100 * got["offensive_share"], 1),
                    "failure_pct": round(100 * got["failure_rate"], 1), "length_ratio": round(length, 2),
                    "example": out[3]}

        rows = [{"pairs": 0, "schedule": "starter", **score(str(path))}]
        copy_chrf = metrics.task_scores(texts, refs)["chrf"]
        rows.append({"pairs": 0, "schedule": "copy the input", "chrf": round(copy_chrf, 2)})
        print(rows[0], rows[1], sep="\n", flush=True)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(pool))
        for n in args.pairs:
            chosen = [pool[i] for i in order[:n]]
            for name, (lr, epochs, refcopy) in SCHEDULES.items():
                pairs = [(r["text"], r["reference"]) for r in chosen]
                pairs += [(r["reference"], r["reference"]) for r in chosen] if refcopy else []
                model = Path(tmp) / f"ft-{n}-{len(rows)}"
                t = time.perf_counter()
                _fine_tune(replace(cfg, lr=lr, epochs=epochs), str(path), pairs, model, seed=args.seed)
                row = {"pairs": n, "schedule": name, "fine_tune_s": round(time.perf_counter() - t, 1),
                       **score(str(model))}
                learner.clear_cache()
                rows.append(row)
                print(row, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "starter": built, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
