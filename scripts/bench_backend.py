"""Benchmark the ML backend's /predict against a bare Flask route returning the same JSON.

Both apps run under gunicorn (gthread, as in the Dockerfile) on 127.0.0.1 and are driven by wrk
(Debian package `wrk`), each request asking for one of 100 stored tasks, as Label Studio does
when an annotator opens a task. Runs: 16 connections for --seconds against each app, then 50
connections for --soak-seconds against the backend, counting errors. Everything is loopback only
and bounded in time.

    .venv/bin/python scripts/bench_backend.py [--seconds 15] [--soak-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TASKS = 100

LUA = """
local ids = {%s}
local n = 0
request = function()
  n = n + 1
  local id = ids[(n %% #ids) + 1]
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"},
    '{"tasks": [{"id": ' .. id .. ', "data": {"text": "x"}}], "project": "1.1"}')
end
"""


def bare_app():
    """A Flask app whose /predict answers the stored JSON for the task id, and does nothing else."""
    from flask import Flask, jsonify, request

    answers = {int(k): v for k, v in json.loads(Path(os.environ["BENCH_ANSWERS"]).read_text()).items()}
    app = Flask("bare")

    @app.post("/predict")
    def predict():
        tasks = request.get_json()["tasks"]
        return jsonify({"results": [answers[t["id"]] for t in tasks]})

    @app.get("/health")
    def health():
        return jsonify({"status": "UP"})

    return app


def make_ledger(data_dir: Path) -> list[int]:
    """A ledger with one round of 100 stored drafts; returns their task ids."""
    sys.path.insert(0, str(ROOT))
    from loop.ledger import Ledger
    from loop.teacher import Draft

    ledger = Ledger(data_dir / "ledger.sqlite")
    ledger.add_pool([{"text": f"text {i}", "norm": f"text {i}"} for i in range(TASKS)])
    rid = ledger.create_round(strategy="stratified", budget=TASKS, learner_version="v0",
                              items=[{"pool_id": i + 1, "cluster": i % 8, "score": i / TASKS} for i in range(TASKS)])
    ledger.set_drafts(rid, {i + 1: Draft(f"k{i}", f"a polite rewrite number {i}") for i in range(TASKS)})
    ledger.set_task_ids(rid, {i + 1: 5000 + i for i in range(TASKS)})
    ledger.set_meta(f"round:{rid}:model_version", "reference|style_transfer@2")
    return [5000 + i for i in range(TASKS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app: str, env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "8", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", app],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{app} did not start: {proc.stderr.read().decode()[-500:]}")


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50"), "p99_ms": ms("99"),
        "errors": (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--soak-seconds", type=int, default=60)
    parser.add_argument("--soak-connections", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per app; the best is reported")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = make_ledger(tmp)
        settings = tmp / "settings.json"
        settings.write_text(json.dumps({"data_dir": str(tmp)}))
        env = dict(os.environ, LABELLOOP_CONFIG=str(settings), PYTHONPATH=str(ROOT))
        env.pop("BASIC_AUTH_USER", None)
        script = tmp / "predict.lua"
        script.write_text(LUA % ", ".join(map(str, ids)))

        port, bare_port = free_port(), free_port()
        backend = start("ml_backend.wsgi:app", env, port)
        try:
            answers = {i: requests.post(f"http://127.0.0.1:{port}/predict", json={"tasks": [{"id": i}]},
                                        timeout=5).json()["results"][0] for i in ids}
            assert all(a["result"] for a in answers.values()), "the backend lost a stored draft"
            (tmp / "answers.json").write_text(json.dumps(answers))
            bare = start("scripts.bench_backend:bare_app()", dict(env, BENCH_ANSWERS=str(tmp / "answers.json")),
                         bare_port)
            try:
                # both servers up, measured alternately, so neither gains from running first or last
                runs: dict[str, list[dict]] = {"backend": [], "bare": []}
                for _ in range(args.repeats):
                    for name, p in (("bare", bare_port), ("backend", port)):
                        runs[name].append(wrk(f"http://127.0.0.1:{p}", script, 16, args.seconds))
                soak = wrk(f"http://127.0.0.1:{port}", script, args.soak_connections, args.soak_seconds)
            finally:
                bare.terminate()
                bare.wait(30)
        finally:
            backend.terminate()
            backend.wait(30)
    real, baseline = (max(runs[n], key=lambda r: r["rps"]) for n in ("backend", "bare"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average before {load_before[0]:.2f},"
          f" after {os.getloadavg()[0]:.2f}")
    summary = {"runs_16": runs, "backend_16": real, "bare_16": baseline,
               "ratio_rps": round(real["rps"] / baseline["rps"], 3), f"backend_soak_{args.soak_connections}": soak}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
