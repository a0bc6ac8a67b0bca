"""Benchmark the look-ahead: how long annotators wait for the loop, with team.lookahead 0 and 1.

A real Label Studio, the scheduler `labelloop run` starts, and simulated annotators (threads) who each
take the next open task of the open rounds (oldest round first, as Label Studio's stream shows them),
spend a fixed time on it and submit a verdict, followed by the webhook's event. An annotator who finds no
task while more work is still to come is idle. Wall time runs from the first task a person can take to
the last verdict; idle share = total idle / (annotators x wall time).

    .venv/bin/python scripts/bench_team.py                        # 4 annotators, 4 rounds, look-ahead 0 and 1
    .venv/bin/python scripts/bench_team.py --lookahead 1 --pace 4 --budget 16
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from loop import annotators, localstudio, rounds  # noqa: E402
from loop.config import load_settings  # noqa: E402
from loop.ledger import Ledger  # noqa: E402
from loop.scheduler import Scheduler  # noqa: E402
from loop.service import ensure_pool  # noqa: E402
from loop.studio import Studio  # noqa: E402

console = Console(stderr=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Team:
    """The annotators' shared view: which tasks are taken, when work started and ended, who waited how long."""

    def __init__(self, ctx: rounds.Context, people: int, pace: float, rounds_wanted: int, seed: int):
        self.ctx, self.people, self.pace, self.rounds_wanted = ctx, people, pace, rounds_wanted
        self.lock = threading.Lock()
        self.taken: set[int] = set()
        self.started: float | None = None  # the first task anyone could take
        self.ended: float | None = None  # the last verdict
        self.idle = [0.0] * people
        self.done = [0] * people
        self.rng = np.random.default_rng(seed)
        self.failed: list[str] = []

    def take(self) -> dict | None:
        """The next untaken task of the open rounds, oldest round first; None when there is none now."""
        ledger = self.ctx.ledger
        with self.lock:
            for rnd in ledger.open_rounds():
                for item in ledger.batch(rnd["id"]):
                    if item["task_id"] and item["task_id"] not in self.taken:
                        self.taken.add(item["task_id"])
                        if self.started is None:
                            self.started = time.monotonic()
                        return item
        return None

    def all_handed_out(self) -> bool:
        """True once every round wanted is imported and each of its tasks was taken: no more work comes."""
        ledger = self.ctx.ledger
        made = ledger.rounds()
        if len(made) < self.rounds_wanted or any(r["state"] in ("selected", "distilled") for r in made):
            return False
        with self.lock:
            return all(b["task_id"] in self.taken for r in made for b in ledger.batch(r["id"]) if b["draft"])

    def work(self, person: int, user_id: int, poke) -> None:
        """One annotator: take, read (`pace` seconds), submit, and report it as the webhook would."""
        ctx = self.ctx
        try:
            while True:
                item = self.take()
                if item is None:
                    if self.all_handed_out():
                        return
                    waited = time.monotonic()
                    while (item := self.take()) is None and not self.all_handed_out():
                        time.sleep(0.05)  # a person checking the stream for new tasks
                    if self.started is not None:
                        self.idle[person] += time.monotonic() - max(waited, self.started)
                    if item is None:
                        return
                time.sleep(self.pace)  # a person reads the source and the draft, and decides
                with self.lock:
                    [verdict] = annotators.choose(1, self.rng, (0.7, 0.2, 0.1))
                text = annotators.edit(item["draft"]) if verdict == "edit" else item["draft"]
                annotation = ctx.studio.annotate(item["task_id"], verdict=verdict, text=text, user_id=user_id)
                ctx.ledger.record_event("ANNOTATION_CREATED", ctx.project_id, item["task_id"], annotation)
                poke()  # the webhook makes the scheduler look at once
                with self.lock:
                    self.done[person] += 1
                    self.ended = time.monotonic()
        except Exception as exc:  # reported in the results: a bench that silently loses a person lies
            self.failed.append(f"annotator {person + 1}: {type(exc).__name__}: {exc}")


def one_run(studio: Studio, lookahead: int, args: argparse.Namespace, work_dir: Path) -> dict:
    """4 rounds with one look-ahead setting on a fresh ledger and project; the team's idle and wall time."""
    pool = work_dir / "pool.tsv"
    lines = (ROOT / "data" / "paradetox" / "pool.tsv").read_text(encoding="utf-8").splitlines()[: args.pool + 1]
    pool.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = load_settings(
        data_dir=str(work_dir / f"lookahead-{lookahead}"), pool__path=str(pool),
        learner__base_model=str(ROOT / "models" / "starter"), learner__instruction=False,
        learner__max_target_tokens=48, learner__epochs=args.epochs, cluster__k=args.k, select__budget=args.budget,
        select__max_rounds=args.rounds, team__lookahead=lookahead, teacher__kind="reference",
        scheduler__poll_seconds=0.5, scheduler__reconcile_seconds=10,
    )
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    project = studio.ensure_project(f"bench team {uuid.uuid4().hex[:8]}", settings.label_config_path.read_text())
    ctx = rounds.Context(settings, ledger, studio, project_id=project)
    users = [studio.ensure_user(f"bench-annotator-{n + 1}@labelloop.local") for n in range(args.people)]
    team = Team(ctx, args.people, args.pace, args.rounds, args.seed)
    t0 = time.monotonic()

    def show(step: rounds.Step) -> None:
        if step.kind != "waiting":
            console.print(f"  [{time.monotonic() - t0:6.1f} s] look-ahead {lookahead}: {step}")

    scheduler = Scheduler(ctx, on_step=show)
    scheduler.start()
    try:
        people = [threading.Thread(target=team.work, args=(n, users[n], scheduler.poke), daemon=True)
                  for n in range(args.people)]
        for p in people:
            p.start()
        for p in people:
            p.join(timeout=args.timeout)
        finish = time.monotonic() + args.timeout
        while sum(r["state"] == "done" for r in ledger.rounds()) < args.rounds and time.monotonic() < finish:
            time.sleep(0.2)  # the last round's training, after the last verdict
        all_done = time.monotonic()
    finally:
        scheduler.stop()
    wall = (team.ended or 0) - (team.started or 0)
    idle = sum(team.idle)
    return {
        "lookahead": lookahead, "annotators": args.people, "pace_s": args.pace, "rounds": args.rounds,
        "budget": args.budget, "tasks": sum(team.done), "wall_s": round(wall, 1), "idle_s": round(idle, 1),
        "idle_share": round(idle / (args.people * wall), 4) if wall > 0 else None,
        "idle_per_annotator_s": [round(i, 1) for i in team.idle],
        "first_task_after_s": round((team.started or t0) - t0, 1), "all_done_s": round(all_done - t0, 1),
        "learners": [r["learner_version"] for r in ledger.rounds()],
        "states": [r["state"] for r in ledger.rounds()], "errors": team.failed + (
            [scheduler.stopped_with] if scheduler.stopped_with else []),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookahead", type=int, action="append", help="repeatable; default 0 and 1")
    parser.add_argument("--people", type=int, default=4, help="simulated annotators")
    parser.add_argument("--pace", type=float, default=6.0, help="seconds a person spends on one task")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=int, default=16, help="tasks per round")
    parser.add_argument("--k", type=int, default=4, help="clusters")
    parser.add_argument("--pool", type=int, default=120, help="pool items (the first rows of the bundled pool)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="per run")
    parser.add_argument("--port", type=int, default=None, help="Label Studio's port (default: a free one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a tick longer than the poll interval is expected
    results = []
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-team-") as tmp:
        console.print("starting Label Studio ...")
        with localstudio.running(Path(tmp) / "label-studio", port=args.port or free_port(),
                                 venv_dir=ROOT / ".venv-ls", timeout=300) as ls:
            studio = Studio(ls.url, ls.token)
            for lookahead in args.lookahead or [0, 1]:
                console.print(f"look-ahead {lookahead}: {args.people} annotators at {args.pace:g} s per task, "
                              f"{args.rounds} rounds of {args.budget}")
                run_dir = Path(tmp) / f"run-{lookahead}"
                run_dir.mkdir()
                results.append(one_run(studio, lookahead, args, run_dir))
                console.print(json.dumps(results[-1]))
    table = Table(title="annotator idle time (real Label Studio, simulated annotators at a fixed pace)")
    for col in ("look-ahead", "tasks", "wall time", "idle (all annotators)", "idle share", "learner per round"):
        table.add_column(col)
    for r in results:
        table.add_row(str(r["lookahead"]), str(r["tasks"]), f"{r['wall_s']} s", f"{r['idle_s']} s",
                      f"{100 * r['idle_share']:.1f}%" if r["idle_share"] is not None else "", " ".join(r["learners"]))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
