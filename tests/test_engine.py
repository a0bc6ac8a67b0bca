"""The pool engines: Ray and the local path store identical outputs, stream batches into the ledger, lose
only a failing batch or a lost actor's batches, and a re-run computes only what is missing; Ray's actors
stay warm across stages and calls.

One real local Ray for the module (2 CPUs, 127.0.0.1, no dashboard), the real starter learner, the real
embedding model and R; the counting and failing scorers below wrap the real profanity scorer.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loop import engine, rounds, vocab
from loop.config import EngineSettings, load_settings
from loop.errors import ConfigError, EngineError
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.rounds import Context
from loop.scorer import profanity

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 40
BATCH = 8  # engine batch: 40 items are 5 batches


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A private Ray on loopback with 2 CPUs for this module; shut down (its processes end) at the end."""
    ray = pytest.importorskip("ray")
    saved = os.environ.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def _ctx(tmp_path: Path, starter_model: Path, kind: str, **overrides) -> Context:
    pool = tmp_path / "pool.tsv"
    if not pool.exists():
        with (ROOT / "data/paradetox/pool.tsv").open(newline="") as src, pool.open("w", newline="") as dst:
            rows = list(csv.reader(src, delimiter="\t"))[: ITEMS + 1]
            csv.writer(dst, delimiter="\t", lineterminator="\n").writerows(rows)
    settings = load_settings(
        data_dir=str(tmp_path / kind), learner__base_model=str(starter_model), learner__instruction=False,
        learner__max_target_tokens=12, learner__batch_size=4, cluster__k=2, engine__kind=kind,
        engine__batch_size=BATCH, **overrides,
    )
    ledger = Ledger(settings.ledger_path)
    ingest(ledger, pool, text_col="text", reference_col="reference")
    return Context(settings=settings, ledger=ledger)


class Counting:
    """A scorer factory (picklable, for Ray actors): profanity, appending how many texts each call scored to
    `log`; with `fail_on`, that call (1-based, counted per worker process) raises instead."""

    def __init__(self, log: Path, fail_on: int | None = None) -> None:
        self.log, self.fail_on = log, fail_on

    def __call__(self):
        calls = 0

        def score(texts: list[str]) -> list[float]:
            nonlocal calls
            calls += 1
            if calls == self.fail_on:
                raise RuntimeError("injected failure")
            with self.log.open("a") as f:
                f.write(f"{len(texts)}\n")
            return profanity(texts)

        return "profanity", score

    def scored(self) -> int:
        return sum(int(n) for n in self.log.read_text().split()) if self.log.exists() else 0


def _score(ctx: Context, ids: list[int], make_scorer) -> int:
    """The engine's scoring of `ids` for the current learner, as rounds does it (learner inputs, no instruction)."""
    model = rounds.current_learner(ctx)
    key, signature = rounds.score_key(ctx.settings, model["version"])
    todo = ctx.ledger.ids_without_score(key, signature, ids)
    inputs = {it["id"]: it["text"] for it in ctx.ledger.pool_items(todo)}
    return engine.score_pool(ctx.settings, ctx.ledger, key=key, signature=signature, model=model["path"],
                             inputs=inputs, stored={}, make_scorer=make_scorer)


def test_ray_and_local_store_identical_embeddings_clusters_outputs_and_scores(ray_local, tmp_path, starter_model):
    results = {}
    for kind in ("local", "ray"):
        ctx = _ctx(tmp_path, starter_model, kind)
        clusters = rounds.prepare_pool(ctx)
        scored = rounds.score_candidates(ctx, sorted(clusters), rounds.current_learner(ctx))
        results[kind] = (ctx.ledger.embeddings(ctx.settings.embed.model), clusters, scored)
    (ids, local_vectors), local_clusters, local_scored = results["local"]
    (ray_ids, ray_vectors), ray_clusters, ray_scored = results["ray"]
    assert len(ids) == ITEMS and ids == ray_ids
    assert np.array_equal(local_vectors, ray_vectors)  # float32, bit for bit
    assert local_clusters == ray_clusters
    assert len(local_scored) == ITEMS and all(y for y, _ in local_scored.values())
    assert local_scored == ray_scored  # the same greedy strings and the same scores, item by item


def test_a_rerun_after_a_partial_run_computes_only_the_missing_items(ray_local, tmp_path, starter_model):
    """On Ray (tests/test_versions.py pins the same for the local path through loop.rounds)."""
    ctx = _ctx(tmp_path, starter_model, "ray")
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    first = Counting(tmp_path / "first.log")
    assert _score(ctx, ids[: ITEMS // 2], first) == ITEMS // 2 and first.scored() == ITEMS // 2
    key = rounds.score_key(ctx.settings, "v0")
    before = ctx.ledger.scores(*key)
    again = Counting(tmp_path / "again.log")
    assert _score(ctx, ids, again) == ITEMS - ITEMS // 2  # only the missing half ran
    assert again.scored() == ITEMS - ITEMS // 2
    after = ctx.ledger.scores(*key)
    assert sorted(after) == ids and {i: after[i] for i in before} == before  # the stored half is untouched
    nothing = Counting(tmp_path / "nothing.log")
    assert _score(ctx, ids, nothing) == 0 and nothing.scored() == 0


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_failing_batch_loses_only_itself_and_the_rerun_computes_it(ray_local, tmp_path, starter_model, kind):
    ctx = _ctx(tmp_path, starter_model, kind, engine__actors=1)  # one worker: its 2nd batch fails
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    with pytest.raises(EngineError, match=rf"{BATCH} of {ITEMS} items failed \(RuntimeError: injected failure\);"
                                          rf" the other {ITEMS - BATCH} are stored"):
        _score(ctx, ids, Counting(tmp_path / "failing.log", fail_on=2))
    key = rounds.score_key(ctx.settings, "v0")
    assert len(ctx.ledger.scores(*key)) == ITEMS - BATCH
    rerun = Counting(tmp_path / "rerun.log")
    assert _score(ctx, ids, rerun) == BATCH and rerun.scored() == BATCH
    assert sorted(ctx.ledger.scores(*key)) == ids


class Where:
    """A scorer factory that writes the process id of every scoring call to `log`, and with `die` set, ends
    its process at the first call of the first actor to score (once: the marker file remembers)."""

    def __init__(self, log: Path, die: Path | None = None) -> None:
        self.log, self.die = log, die

    def __call__(self):
        def score(texts: list[str]) -> list[float]:
            if self.die is not None and not self.die.exists():
                self.die.write_text("died")
                os._exit(1)  # a lost worker: killed, out of memory
            with self.log.open("a") as f:
                f.write(f"{os.getpid()}\n")
            return profanity(texts)

        return "profanity", score

    def pids(self) -> set[int]:
        return {int(n) for n in self.log.read_text().split()}


def test_the_actors_stay_warm_across_stages_and_calls(ray_local, tmp_path, starter_model):
    """The embedding, the first scoring and a second scoring run in the same actor processes: start-up and
    imports are paid once per process, not once per stage (the Ray overhead measured in BENCHMARKS.md)."""
    ctx = _ctx(tmp_path, starter_model, "ray")
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    engine.embed_pool(ctx.settings, ctx.ledger, ids)
    first, second = Where(tmp_path / "first.log"), Where(tmp_path / "second.log")
    assert _score(ctx, ids[: ITEMS // 2], first) == ITEMS // 2
    assert _score(ctx, ids[ITEMS // 2 :], second) == ITEMS - ITEMS // 2
    assert first.pids() and first.pids() | second.pids() <= {pid for pid in _actor_pids()}
    assert len(_actor_pids()) == ctx.settings.engine.actors  # no new actors for the second stage or call


def _actor_pids() -> set[int]:
    """The process ids of the engine's live actors."""
    import ray

    pool = next(iter(engine._POOLS.values()))
    return set(ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in pool.actors]))


def test_a_lost_actor_loses_only_its_batches_and_is_replaced(ray_local, tmp_path, starter_model):
    ctx = _ctx(tmp_path, starter_model, "ray")
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    before = _actor_pids()
    with pytest.raises(EngineError, match=r"items failed \(lost ray actor: .*\); the other \d+ are stored"):
        _score(ctx, ids, Where(tmp_path / "dying.log", die=tmp_path / "died"))
    key = rounds.score_key(ctx.settings, "v0")
    kept = len(ctx.ledger.scores(*key))
    assert 0 < kept < ITEMS  # at most the dead actor's batches in flight (two) were lost
    assert ITEMS - kept <= 2 * BATCH
    after = _actor_pids()
    assert len(after) == ctx.settings.engine.actors and after != before  # the dead one was replaced
    rerun = Where(tmp_path / "rerun.log")
    assert _score(ctx, ids, rerun) == ITEMS - kept and sorted(ctx.ledger.scores(*key)) == ids


def test_the_private_ray_outlives_the_thread_that_started_it_and_leaves_no_process_behind(tmp_path):
    """A scheduler job or a web request may be the first to need Ray, on a thread that then ends; Ray ties
    its processes to the starting thread, so they must not die with it, nor be left running at exit."""
    pytest.importorskip("ray")
    code = (
        "import threading, os, ray\n"
        "from loop import engine\n"
        "from loop.config import load_settings\n"
        "s = load_settings(engine__kind='ray', engine__local_cpus=1)\n"
        "t = threading.Thread(target=engine.connect, args=(s.engine,)); t.start(); t.join()\n"
        "print('node', ray._private.worker._global_node.address_info['raylet_socket_name'])\n"
        "task = ray.remote(lambda: os.getpid())\n"
        "print('pid', ray.get(task.remote(), timeout=60))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env=_child_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pid " in done.stdout  # a task ran after the starting thread had ended
    socket = done.stdout.split("node ", 1)[1].split()[0]
    deadline = time.monotonic() + 30
    while _processes_of(socket) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(socket) == []  # Ray's exit handler stopped the node and its agents


def _child_env() -> dict[str, str]:
    """This environment for a child Python that imports loop and starts its own Ray (no RAY_ADDRESS to join)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(ROOT)}


def _processes_of(raylet_socket: str) -> list[str]:
    """Command lines of live processes of the Ray node with this raylet socket: those that name its session
    directory or hold a file in it open (Ray's agents rename themselves, but keep their logs open)."""
    session = str(Path(raylet_socket).parent.parent)
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            files = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:  # not a process, or one that ended meanwhile
            continue
        if session in cmd or any(f.startswith(session) for f in files):
            out.append(cmd)
    return out


def test_engine_settings_default_to_local_and_reject_unknown_kinds():
    assert EngineSettings.model_fields["kind"].annotation.__args__ == vocab.ENGINES
    assert load_settings().engine.kind == "local"
    assert isinstance(engine.get(load_settings()), engine.LocalEngine)
    assert isinstance(engine.get(load_settings(engine__kind="ray")), engine.RayEngine)
    with pytest.raises(ConfigError, match="engine.kind"):
        load_settings(engine__kind="spark")


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_a_ray_address_nothing_answers_fails_at_once_naming_the_setting(form: str) -> None:
    """Ray retries an address nobody answers for ever; labelloop fails instead, naming engine.ray_address.
    In a child process, so that no Ray this module started is joined instead."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        address = form.format(f"127.0.0.1:{s.getsockname()[1]}")
    code = ("from loop import engine; from loop.config import EngineSettings\n"
            f"engine.connect(EngineSettings(kind='ray', ray_address={address!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_child_env(), cwd=ROOT)
    assert done.returncode != 0
    assert "EngineError: engine.ray_address: cannot start or join" in done.stderr
    assert f"nothing answers at 127.0.0.1:{address.rsplit(':', 1)[1]}" in done.stderr
