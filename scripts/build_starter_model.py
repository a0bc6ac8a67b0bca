"""Build the small local "starter" learner G (a tiny T5 seq2seq model) offline, in about a minute.

No FLAN-T5 weights are reachable offline, so tests and the offline default use this model: a byte-level
BPE tokenizer trained on the bundled ParaDetox sample plus a ~1.4M-parameter T5 trained for a few hundred
steps on `starter.tsv` (offensive text -> neutral rewrite). Quality is not the point; a fast,
deterministic, loadable `AutoModelForSeq2SeqLM` + `AutoTokenizer` directory is. The builder itself
lives in loop/starter.py (simulate builds per-dataset starters with it); this script reads the files.

Usage:
    python scripts/build_starter_model.py [--out models/starter] [--steps N] [--force]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's loop/, installed or not

from loop import starter  # noqa: E402
from loop.starter import LR, is_built, train_tokenizer  # noqa: E402, F401 (train_tokenizer: the script's old API)

DEFAULT_OUT = ROOT / "models" / "starter"
DEFAULT_DATA = ROOT / "data" / "paradetox" / "starter.tsv"
DEFAULT_POOL = ROOT / "data" / "paradetox" / "pool.tsv"
DEFAULT_STEPS = 600


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a `text<TAB>reference` TSV (with header) into (text, reference) pairs."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or not {"text", "reference"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a TSV header with columns 'text' and 'reference'")
        return [(r["text"], r["reference"]) for r in reader if r["text"] and r["reference"]]


def build(
    out: str | Path = DEFAULT_OUT,
    data: str | Path = DEFAULT_DATA,
    pool: str | Path | None = DEFAULT_POOL,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
    lr: float = LR,
) -> Path:
    """Build the starter model into `out` (atomically) unless already built; return `out`."""
    out = Path(out)
    if is_built(out) and not force:
        return out
    if steps < 0:
        raise ValueError("steps must be >= 0")

    t0 = time.perf_counter()
    pairs = read_pairs(data)
    if not pairs:
        raise ValueError(f"{data}: no training pairs")
    tok_texts = [c for p in pairs for c in p]
    if pool is not None and Path(pool).is_file():
        tok_texts += [c for p in read_pairs(pool) for c in p]  # tokenizer training only
    model, tokenizer, facts = starter.train(pairs, tok_texts, steps=steps, seed=seed, lr=lr, progress=progress)
    meta = {
        "built_by": "scripts/build_starter_model.py",
        **{k: facts[k] for k in ("steps", "seed", "train_loss")},
        "data": _rel(data),
        "tokenizer_data": [_rel(data)] + ([_rel(pool)] if pool is not None and Path(pool).is_file() else []),
        **{k: v for k, v in facts.items() if k not in ("steps", "seed", "train_loss")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return starter.save(model, tokenizer, out, meta)


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: models/starter)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="training pairs TSV (text<TAB>reference)")
    ap.add_argument("--pool", default=str(DEFAULT_POOL), help="extra TSV used only for tokenizer training")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = ap.parse_args(argv)

    if is_built(args.out) and not args.force:
        print(f"starter model already built at {args.out} (use --force to rebuild)")
        return 0
    sys.path.insert(0, str(ROOT))
    from loop import threads

    threads.configure()  # before torch loads: passive OpenMP waits, every available core
    t0 = time.perf_counter()
    out = build(args.out, args.data, args.pool, args.steps, args.seed, force=args.force, progress=True)
    meta = json.loads((out / "labelloop.json").read_text(encoding="utf-8"))
    print(
        f"built starter model at {out} in {time.perf_counter() - t0:.1f}s "
        f"({meta['parameters']:,} params, {meta['steps']} steps, train_loss {meta['train_loss']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
