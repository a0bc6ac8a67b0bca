"""Benchmark the teacher: wall time of a batch at concurrency N against sequential, and fault tolerance.

Runs against the tests' local OpenAI-compatible server (127.0.0.1, a fixed latency per reply), so it
measures the client side: concurrency, limits, retries and accounting, not a model.

    .venv/bin/python scripts/bench_teacher.py                       # 500 prompts, 300 ms, c=16 vs c=1
    .venv/bin/python scripts/bench_teacher.py --n 100 --skip-sequential
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from loop import teacher  # noqa: E402
from loop.ledger import Ledger  # noqa: E402
from tests.support.openai_server import FakeOpenAI  # noqa: E402

console = Console(stderr=True)


def run(n: int, concurrency: int, *, latency: float, fault_rate: float = 0.0, timeout: float = 5.0,
        max_attempts: int = 5, seed: int = 0) -> dict:
    """One batch of `n` prompts through a fresh ledger; wall time, outcomes, attempts and faults."""
    template = teacher.load_template("style_transfer")
    items = [{"pool_id": i, "text": f"benchmark sentence number {i}, you idiot", "reference": None}
             for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(
        latency=latency, fault_rate=fault_rate, retry_after=0.5, slow_s=timeout + 1, seed=seed
    ) as server:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        t = teacher.OpenAITeacher(
            model="gpt-4o", api_key="bench-key", base_url=server.base_url, concurrency=concurrency,
            timeout=timeout, max_attempts=max_attempts, rpm=100_000, tpm=100_000_000, backoff=0.5,
            prices={"gpt-4o": (2.5, 10.0)}, progress=True,
        )
        started = time.perf_counter()
        results = teacher.distill(ledger, t, template, items, round_id=1)
        wall = time.perf_counter() - started
        usage = ledger.teacher_usage(1)
        served = len(server.requests)
        teacher.distill(ledger, t, template, items, round_id=2)  # the same batch again: from the cache
        rerun_calls = len(server.requests) - served
        failures = ledger.teacher_failures(1)
    return {
        "n": n, "concurrency": concurrency, "latency_s": latency, "fault_rate": fault_rate,
        "wall_s": round(wall, 2), "distilled": sum(1 for r in results.values() if r.text),
        "failed": sum(1 for r in results.values() if r.text is None), "attempts": usage["attempts"],
        "faults": dict(server.fault_counts), "failure_reasons": sorted({f["reason"] for f in failures}),
        "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
        "cost_usd": round(usage["cost"], 4), "rerun_calls": rerun_calls,
    }


def main() -> None:
    """Parse options, run the three measurements, print a table and one JSON line per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="prompts per batch")
    parser.add_argument("--latency", type=float, default=0.3, help="server seconds per reply")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--skip-sequential", action="store_true", help="skip the concurrency-1 run")
    args = parser.parse_args()

    runs = [run(args.n, args.concurrency, latency=args.latency)]
    if not args.skip_sequential:
        runs.append(run(args.n, 1, latency=args.latency))
    runs.append(run(args.n, args.concurrency, latency=args.latency, fault_rate=args.fault_rate))

    table = Table(title=f"teacher: {args.n} prompts, {args.latency * 1000:.0f} ms per reply")
    for col in ("concurrency", "faults", "wall s", "distilled", "failed", "attempts", "re-run calls"):
        table.add_column(col)
    for r in runs:
        table.add_row(str(r["concurrency"]), f"{r['fault_rate']:.0%}", f"{r['wall_s']:.2f}", str(r["distilled"]),
                      str(r["failed"]), str(r["attempts"]), str(r["rerun_calls"]))
    console.print(table)
    if not args.skip_sequential:
        console.print(f"speed-up c={args.concurrency} over sequential: {runs[1]['wall_s'] / runs[0]['wall_s']:.1f}x "
                      f"({runs[0]['wall_s'] / runs[1]['wall_s']:.3f} of the sequential time; goal <= 1/12 = 0.083)")
    for r in runs:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
