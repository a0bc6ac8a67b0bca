"""Drive rounds until N are done, annotating as a person would: the process the kill -9 test kills.

Usage: python tests/support/crash_driver.py SETTINGS.json ROUNDS  (LABEL_STUDIO_API_KEY in the environment).
Prints "ready" once the heavy imports and the learner are loaded, so that kills land in round work.
With CRASH_DRIVER_KILL_AT=lookahead-import it kills itself (SIGKILL) at a known point instead: as soon as
Label Studio has answered the import of a look-ahead round, before the ledger records a task id of it.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from loop import annotators, embed, learner, rounds
from loop.config import load_settings
from loop.ledger import Ledger
from loop.studio import Studio


def kill_after_a_lookahead_import(ledger: Ledger) -> None:
    """Die by SIGKILL once a look-ahead round's tasks are in Label Studio and the ledger knows none of their ids."""
    real = Studio.import_batch

    def import_then_die(self: Studio, project_id: int, items: list[dict], model_version: str) -> dict[str, int]:
        ids = real(self, project_id, items, model_version)
        parsed = rounds.parse_task_key(items[0]["key"]) if items else None
        if parsed is not None and parsed[0] > ledger.open_rounds()[0]["id"]:  # a round opened ahead of another
            os.kill(os.getpid(), signal.SIGKILL)
        return ids

    Studio.import_batch = import_then_die


def main() -> int:
    settings = load_settings(sys.argv[1])
    wanted = int(sys.argv[2])
    ledger = Ledger(settings.ledger_path)
    studio = Studio(settings.studio.url, os.environ["LABEL_STUDIO_API_KEY"])
    ctx = rounds.Context(settings, ledger, studio, project_id=int(ledger.find_meta("project_id")))
    if os.environ.get("CRASH_DRIVER_KILL_AT") == "lookahead-import":
        kill_after_a_lookahead_import(ledger)
    learner.load(rounds.current_learner(ctx)["path"])
    embed.embed(["warm up"], model=settings.embed.model)
    print("ready", flush=True)
    rng = np.random.default_rng()
    while sum(r["state"] == "done" for r in ledger.rounds()) < wanted:
        what = rounds.advance(ctx)
        if what.kind == "waiting":
            # a person sees which tasks already carry an annotation; never annotate one twice
            annotated = {a.task_id for a in studio.completed_annotations(ctx.project_id)}
            annotators.annotate_pending(ctx, rng, done=annotated)
        elif what.kind == "idle":
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
