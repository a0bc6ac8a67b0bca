"""The promotion gate round by round on the bundled data: what it decided, on which losses.

Runs the loop's own steps (rounds.select_round, distill_round with the reference teacher, train_round)
on a fresh ledger, with every drafted item accepted as if verified, and no Label Studio. For every
trained version it prints the gate's decision, the two losses it compared, and, as the judge of the
decision, the loss of child and parent on a fixed test set that neither the loop's pool nor any dev
split contains. Works on any labelloop version that has these steps, so the same command measures
the code before and after a change to the gate.

    .venv/bin/python scripts/bench_gate.py --rounds 8 --budget 24 --pool 1000
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POOL = ROOT / "data" / "paradetox" / "pool.tsv"


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--pool", type=int, default=1000, help="the first N rows of the bundled pool")
    parser.add_argument("--test", type=int, default=300, help="test pairs from the end of the bundled pool")
    parser.add_argument("--starter", default=str(ROOT / "models" / "starter"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from loop import threads

    threads.configure(args.threads)  # before torch loads (loop.learner below)

    from loop import learner, rounds
    from loop.config import LearnerSettings, load_settings
    from loop.ingest import ingest
    from loop.ledger import Ledger

    rows = _rows(POOL)
    header, body = rows[0], rows[1:]
    text_i, ref_i = header.index("text"), header.index("reference")
    test = [(r[text_i], r[ref_i]) for r in body[-args.test:]]
    out_rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        pool = Path(tmp) / "pool.tsv"
        lines = POOL.read_text(encoding="utf-8").splitlines()
        pool.write_text("\n".join(lines[: args.pool + 1]) + "\n", encoding="utf-8")
        extra = {}
        if "instruction" in LearnerSettings.model_fields:  # the starter was trained on bare texts
            extra["learner__instruction"] = False
        settings = load_settings(data_dir=str(Path(tmp) / "proj"), pool__path=str(pool),
                                 learner__base_model=args.starter, learner__runtime="ct2",
                                 teacher__kind="reference", select__budget=args.budget, cluster__k=args.k, **extra)
        ledger = Ledger(settings.ledger_path)
        ingest(ledger, pool, text_col="text", reference_col="reference")
        ctx = rounds.Context(settings, ledger)
        test_loss = {}
        for rnd in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            rid = rounds.select_round(ctx)
            rounds.distill_round(ctx, rid)
            ledger.record_verifications([
                {"annotation_id": 100000 * rid + b["pool_id"], "task_id": 100000 * rid + b["pool_id"],
                 "round_id": rid, "pool_id": b["pool_id"], "verdict": "accept", "target": b["draft"],
                 "updated_at": "2026-01-01T00:00:00"}
                for b in ledger.batch(rid) if b["draft"]
            ])
            parent = rounds.current_learner(ctx)
            version = rounds.train_round(ctx, rid)
            v = ledger.find_model_version(version)
            m = v["metrics"] if v["round_id"] == rid else {}
            for name, path in ((parent["version"], parent["path"]), (version, v["path"])):
                if name not in test_loss:
                    test_loss[name] = learner.evaluate_loss(path, test)
            child, par = m.get("gate_loss", m.get("dev_loss")), m.get("parent_gate_loss", m.get("parent_dev_loss"))
            row = {"round": rnd, "verified": v["pairs"] if m else len(ledger.verified_pairs()),
                   "trained_on": m.get("pairs"), "held_out": m.get("held_out", m.get("dev_pairs", 0)),
                   "gate_pairs": m.get("gate_pairs", m.get("dev_pairs")), "parent": parent["version"],
                   "version": version, "child_loss": child, "parent_loss": par,
                   "decision": (v["note"] or "").split(" (")[0] if m else "not trained",
                   "child_test": test_loss[version], "parent_test": test_loss[parent["version"]],
                   "in_use": ledger.find_current_model()["version"], "seconds": round(time.perf_counter() - t0, 1)}
            out_rows.append(row)
            print(json.dumps(row), flush=True)

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    print("\n| round | verified | trained on | held out | gate pairs | parent | child | child loss | parent loss "
          "| decision | child test loss | parent test loss | in use after |")
    print("|" + "---|" * 13)
    for r in out_rows:
        print(f"| {r['round']} | {r['verified']} | {r['trained_on'] or ''} | {r['held_out'] or 0} | "
              f"{r['gate_pairs'] or ''} | {r['parent']} | {r['version']} | {f(r['child_loss'])} | "
              f"{f(r['parent_loss'])} | {r['decision']} | {f(r['child_test'])} | {f(r['parent_test'])} | "
              f"{r['in_use']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out_rows, indent=1))


if __name__ == "__main__":
    main()
