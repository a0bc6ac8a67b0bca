"""Learner generation under load: items/s with 0, 1 and 2 competing CPU-bound processes, per runtime and
threading policy; figures go to BENCHMARKS.md.

    .venv/bin/python scripts/bench_load.py                       # --items 256 --max-seconds 60 --runtimes hf,ct2
    .venv/bin/python scripts/bench_load.py --policies default,auto,1 --competitors 0,1,2

Policies: `default` is the old behaviour (torch's defaults: one thread per core, OpenMP's default
spinning wait; ct2 took torch's count); `auto` is loop.threads' policy (every available core, passive
OpenMP wait); an integer is that many threads with the passive wait. The competitors are pure-Python
busy loops (one core each) that this script starts before the measurement and kills after it. Each
measurement runs in a fresh interpreter (OpenMP reads its policy when it loads); model loading, the
CTranslate2 conversion and a warm-up batch are excluded. `/proc/loadavg` is read before each row:
other work on the machine shows there too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_scoring import STARTER_MODEL, pool_texts  # noqa: E402

BUSY = "while True:\n    pass\n"
OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LABELLOOP_THREADS")


def child(policy: str, runtime: str, model: str, items: int, warmup: int, cache: str, max_seconds: float) -> dict:
    """One measurement in this (fresh) process: the policy first, then torch, then timed generation in
    batches of 32 items until `items` are done or `max_seconds` have passed (a collapsed run would
    otherwise take an hour)."""
    if policy != "default":
        from loop import threads

        threads.configure("auto" if policy == "auto" else int(policy))
    import torch

    from loop import learner
    from loop import runtime as rt

    texts = pool_texts(warmup + items)
    learner.load(model)
    if runtime != "hf":
        rt.convert(model, runtime, cache)
    learner.generate(model, texts[:warmup], runtime=runtime, cache_dir=cache)  # warm-up, not timed
    t0, done = time.perf_counter(), 0
    while done < items and (done == 0 or time.perf_counter() - t0 < max_seconds):
        chunk = texts[warmup + done: warmup + min(items, done + 32)]
        learner.generate(model, chunk, runtime=runtime, cache_dir=cache)
        done += len(chunk)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "items": done, "items_per_s": done / seconds, "torch_threads": torch.get_num_threads(),
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}


def measure(policy: str, runtime: str, competitors: int, args: argparse.Namespace) -> dict:
    """Start the competitors, run one child measurement, stop the competitors."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    busy = [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(competitors)]
    try:
        time.sleep(0.5 if competitors else 0)  # the busy loops are running before the model loads
        loadavg = Path("/proc/loadavg").read_text().split()[0]
        spec = {"policy": policy, "runtime": runtime, "model": args.model, "items": args.items,
                "warmup": args.warmup, "cache": args.cache, "max_seconds": args.max_seconds}
        proc = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=args.timeout)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{policy}/{runtime}/{competitors} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return {"policy": policy, "runtime": runtime, "competitors": competitors, "loadavg_before": loadavg,
            **json.loads(line[len("RESULT "):])}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        print("RESULT " + json.dumps(child(**json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(STARTER_MODEL))
    parser.add_argument("--items", type=int, default=256, help="pool items timed per measurement")
    parser.add_argument("--max-seconds", type=float, default=60, help="stop a measurement after this long")
    parser.add_argument("--warmup", type=int, default=32, help="items generated first, untimed")
    parser.add_argument("--runtimes", default="hf,ct2")
    parser.add_argument("--policies", default="default,auto")
    parser.add_argument("--competitors", default="0,1,2")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one measurement may take")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "labelloop-bench-load-ct2"))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    rows = []
    table = Table(title=f"learner generation, {args.items} items, {Path(args.model).name}")
    for col in ("runtime", "policy", "competitors", "items/s", "items", "torch threads", "OMP wait", "load before"):
        table.add_column(col)
    for runtime in args.runtimes.split(","):
        for policy in args.policies.split(","):
            for n in (int(c) for c in args.competitors.split(",")):
                r = measure(policy, runtime, n, args)
                rows.append(r)
                print(json.dumps(r), flush=True)
                table.add_row(runtime, policy, str(n), f"{r['items_per_s']:.1f}", str(r["items"]),
                              str(r["torch_threads"]), r["wait_policy"], r["loadavg_before"])
    Console().print(table)
    print("loadavg after:", Path("/proc/loadavg").read_text().strip())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
