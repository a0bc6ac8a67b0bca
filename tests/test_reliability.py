"""Reliability against the real Label Studio: lost and repeated webhooks, edits and deletions,
kill -9 at random points, a Label Studio outage, one scheduler per project."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from loop import localstudio, rounds
from loop.config import load_settings
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.scheduler import ProjectLock, Scheduler
from loop.teacher import Draft
from tests.support.webserve import serve

ROOT = Path(__file__).resolve().parent.parent
LABEL_CONFIG = (ROOT / "label_config" / "style_transfer.xml").read_text()


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def annotation_result(verdict: str, text: str) -> list[dict]:
    return [
        {"from_name": "response", "to_name": "source", "type": "textarea", "value": {"text": [text]}},
        {"from_name": "verdict", "to_name": "source", "type": "choices", "value": {"choices": [verdict]}},
    ]


class Api:
    """Raw REST calls a person's browser would make (kept apart from loop.studio on purpose)."""

    def __init__(self, label_studio):
        self.url = label_studio.url
        self.headers = {"Authorization": f"Token {label_studio.token}"}

    def call(self, method: str, path: str, **kw):
        reply = requests.request(method, f"{self.url}{path}", headers=self.headers, timeout=120, **kw)
        reply.raise_for_status()
        return reply.json() if reply.content else None


def new_context(tmp_path, studio, label_studio, **overrides) -> rounds.Context:
    overrides.setdefault("team__lookahead", 0)  # one batch at a time, unless a test asks for the look-ahead
    settings = load_settings(data_dir=str(tmp_path / "ll"), studio__url=label_studio.url, **overrides)
    ledger = Ledger(settings.ledger_path)
    project = studio.ensure_project(f"reliability {uuid.uuid4().hex[:8]}", LABEL_CONFIG)
    ledger.set_meta("project_id", str(project))
    return rounds.Context(settings, ledger, studio, project_id=project)


def test_lost_and_repeated_webhooks_still_give_exactly_label_studios_verifications(
    tmp_path, studio, label_studio
):
    ctx = new_context(tmp_path, studio, label_studio)
    api = Api(label_studio)
    verdicts = ["accept", "edit", "reject"]
    tasks = [
        {"data": {"text": f"source {i}", "draft": f"draft {i}", "labelloop_key": f"r1-p{i + 1}"},
         "annotations": [{"result": annotation_result(verdicts[i % 3],
                                                      f"edited {i}" if i % 3 == 1 else f"draft {i}")}]}
        for i in range(1000)
    ]
    ctx.ledger.add_pool([{"text": f"source {i}", "norm": f"source {i}"} for i in range(1000)])  # ids 1..1000
    imported = api.call("POST", f"/api/projects/{ctx.project_id}/import", json=tasks)
    assert imported["task_count"] == 1000 and imported["annotation_count"] == 1000
    in_studio = {a.annotation_id: a for a in studio.completed_annotations(ctx.project_id)}
    assert len(in_studio) == 1000

    # Label Studio's deliveries as they really come: 30% lost, 20% twice, out of order
    rng = random.Random(7)
    deliveries = []
    for ann in in_studio.values():
        if rng.random() < 0.3:
            continue
        event = {"action": "ANNOTATION_CREATED", "project": {"id": ctx.project_id},
                 "task": {"id": ann.task_id}, "annotation": {"id": ann.annotation_id}}
        deliveries += [event, event] if rng.random() < 0.2 else [event]
    rng.shuffle(deliveries)
    delivered = {e["annotation"]["id"] for e in deliveries}
    from ml_backend.app import create_app

    with serve(create_app(ctx.settings, ctx.ledger)) as url, requests.Session() as http:
        for event in deliveries:
            assert http.post(f"{url}/webhook", json=event, timeout=10).status_code == 201

    rounds.sync_verifications(ctx, full=False)  # webhook-driven: exactly the delivered ones
    assert {v["annotation_id"] for v in ctx.ledger.verifications()} == delivered
    assert ctx.ledger.pending_events() == 0

    rounds.sync_verifications(ctx, full=True)  # reconciliation finds the lost ones
    ledger_view = {v["annotation_id"]: (v["verdict"], v["target"]) for v in ctx.ledger.verifications()}
    studio_view = {a.annotation_id: (a.verdict, None if a.verdict == "reject" else a.text)
                   for a in in_studio.values()}
    assert ledger_view == studio_view
    assert len(ctx.ledger.verified_pairs()) == sum(1 for v, _ in studio_view.values() if v != "reject")
    assert rounds.sync_verifications(ctx, full=True) == 0  # nothing counted twice

    # an annotator edits two verdicts later and deletes one annotation
    accepted = [a for a in in_studio.values() if a.verdict == "accept"][:3]
    for ann in accepted[:2]:
        api.call("PATCH", f"/api/annotations/{ann.annotation_id}",
                 json={"result": annotation_result("edit", "second thoughts")})
    api.call("DELETE", f"/api/annotations/{accepted[2].annotation_id}")
    assert rounds.sync_verifications(ctx, full=True) == 3
    now_ = {v["annotation_id"]: v for v in ctx.ledger.verifications()}
    assert [now_[a.annotation_id]["target"] for a in accepted[:2]] == ["second thoughts"] * 2
    assert accepted[2].annotation_id not in now_ and len(now_) == 999
    assert [h["change"] for h in ctx.ledger.verification_history(accepted[0].annotation_id)] == ["created", "updated"]
    assert [h["change"] for h in ctx.ledger.verification_history(accepted[2].annotation_id)] == ["created", "withdrawn"]


def test_an_older_read_never_overwrites_a_newer_verification(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    row = {"annotation_id": 1, "task_id": 1, "round_id": 1, "pool_id": 1, "verdict": "edit", "target": "new",
           "updated_at": "2026-01-02T00:00:00Z"}
    ledger.record_verifications([row])
    stale = dict(row, verdict="accept", target="old", updated_at="2026-01-01T00:00:00Z")
    assert ledger.record_verifications([stale]) == 0
    assert ledger.verifications()[0]["target"] == "new"


def _lock_from_another_process(path) -> subprocess.CompletedProcess:
    """Try the project lock from a new process: exit 3 and the holder's message when it is held."""
    return subprocess.run(
        [sys.executable, "-c",
         "import sys; from loop.scheduler import ProjectLock, AlreadyRunning\n"
         "try:\n    ProjectLock(sys.argv[1]).acquire()\nexcept AlreadyRunning as e:\n"
         "    print(e); sys.exit(3)",
         str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_a_second_scheduler_on_the_same_project_is_refused(tmp_path):
    path = tmp_path / "scheduler.lock"
    lock = ProjectLock(path)
    lock.acquire()
    try:
        other = _lock_from_another_process(path)
        assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
        # within one process the lock is re-entrant (`run` takes it, then its scheduler does) ...
        nested = ProjectLock(path)
        nested.acquire()
        nested.release()
        # ... and stays held for everyone else until the outer holder lets go
        assert _lock_from_another_process(path).returncode == 3
    finally:
        lock.release()
    assert _lock_from_another_process(path).returncode == 0  # free again once released


def _ls_task_keys(api: Api, project_id: int) -> list[str]:
    keys, page = [], 1
    while True:
        reply = requests.get(f"{api.url}/api/tasks", headers=api.headers, timeout=60,
                             params={"project": project_id, "page": page, "page_size": 500, "fields": "task_only"})
        if reply.status_code == 404:
            return keys
        reply.raise_for_status()
        tasks = reply.json()["tasks"]
        keys += [t["data"].get("labelloop_key") for t in tasks]
        if len(tasks) < 500:
            return keys
        page += 1


def test_kill_9_at_random_points_then_resume_loses_and_duplicates_nothing(
    tmp_path, studio, label_studio, starter_model
):
    pool = tmp_path / "pool.tsv"
    lines = (ROOT / "data/paradetox/pool.tsv").read_text().splitlines()[:41]
    pool.write_text("\n".join(lines) + "\n")
    # the starter as configs/local.toml runs it (bare texts, short targets): the kill window below (0 to 1.2 s)
    # is sized for that much round work; at 128 tokens a looping starter never finishes scoring inside it
    ctx = new_context(tmp_path, studio, label_studio, pool__path=str(pool), cluster__k=2, select__budget=4,
                      learner__base_model=str(starter_model), learner__epochs=1, learner__instruction=False,
                      learner__max_target_tokens=48)
    ingest(ctx.ledger, pool, text_col="text", reference_col="reference")
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(ctx.settings.model_dump(mode="json")))
    env = dict(os.environ, LABEL_STUDIO_API_KEY=label_studio.token, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    command = [sys.executable, str(ROOT / "tests" / "support" / "crash_driver.py"), str(settings_file), "4"]
    rng = random.Random(11)
    kills, states_killed_in = 0, []
    while kills < 20:
        log = tmp_path / f"driver-{kills}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline().strip() if ready else b""
        assert line == b"ready", f"driver life {kills} did not start: {log.read_text()[-3000:]}"
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.2))  # the kill point: a random moment of round work
            assert proc.returncode == 0
            break  # finished all rounds before the next kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            current = ctx.ledger.find_current_round()
            states_killed_in.append(current["state"] if current else "none")
    final = subprocess.run(command, capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert kills >= 15, f"only {kills} kills landed before the rounds finished"
    assert len(set(states_killed_in)) >= 2, states_killed_in  # the kills hit several steps

    ledger = ctx.ledger
    keys = _ls_task_keys(Api(label_studio), ctx.project_id)
    assert len(keys) == len(set(keys)), "a task was imported twice"
    imported = {rounds.task_key(r["id"], b["pool_id"]): b["task_id"]
                for r in ledger.rounds() for b in ledger.batch(r["id"]) if b["draft"]}
    assert set(keys) == set(imported) and all(imported.values())
    assert studio.existing_keys(ctx.project_id) == imported
    rounds.sync_verifications(ctx, full=True)
    annotated = studio.completed_annotations(ctx.project_id)
    assert {v["annotation_id"] for v in ledger.verifications()} == {a.annotation_id for a in annotated}
    assert len({a.task_id for a in annotated}) == len(annotated) == len(imported)  # every task verified once
    done = [r for r in ledger.rounds() if r["state"] == "done"]
    assert len(done) == 4
    trained = [v for v in ledger.model_versions() if v["round_id"] is not None]
    assert len(trained) == len({v["round_id"] for v in trained}) <= 4  # no round trained twice


def test_kill_9_in_the_middle_of_a_lookahead_import_resumes_with_no_duplicate_task(
    tmp_path, studio, label_studio, starter_model
):
    pool = tmp_path / "pool.tsv"
    lines = (ROOT / "data/paradetox/pool.tsv").read_text().splitlines()[:41]
    pool.write_text("\n".join(lines) + "\n")
    ctx = new_context(tmp_path, studio, label_studio, pool__path=str(pool), cluster__k=2, select__budget=4,
                      select__max_rounds=2, team__lookahead=1, learner__base_model=str(starter_model),
                      learner__epochs=1, learner__instruction=False, learner__max_target_tokens=48)
    ingest(ctx.ledger, pool, text_col="text", reference_col="reference")
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(ctx.settings.model_dump(mode="json")))
    env = dict(os.environ, LABEL_STUDIO_API_KEY=label_studio.token, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    command = [sys.executable, str(ROOT / "tests" / "support" / "crash_driver.py"), str(settings_file), "2"]
    # killed at a known point, not at a random moment: Label Studio has round 2's tasks, the ledger has none
    killed = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=600,
                            env=dict(env, CRASH_DRIVER_KILL_AT="lookahead-import"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    ledger, api = ctx.ledger, Api(label_studio)
    assert [r["state"] for r in ledger.rounds()] == ["verifying", "distilled"]
    lookahead = [b for b in ledger.batch(2) if b["draft"]]
    assert lookahead and not any(b["task_id"] for b in lookahead)
    assert sum(k.startswith("r2-") for k in _ls_task_keys(api, ctx.project_id)) == len(lookahead)

    final = subprocess.run(command, capture_output=True, env=env, cwd=ROOT, timeout=600)
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    keys = _ls_task_keys(api, ctx.project_id)
    assert len(keys) == len(set(keys)), "a task was imported twice"
    imported = {rounds.task_key(r["id"], b["pool_id"]): b["task_id"]
                for r in ledger.rounds() for b in ledger.batch(r["id"]) if b["draft"]}
    assert set(keys) == set(imported) and all(imported.values())
    assert studio.existing_keys(ctx.project_id) == imported
    assert [(r["state"], r["learner_version"]) for r in ledger.rounds()] == [("done", "v0"), ("done", "v0")]
    rounds.sync_verifications(ctx, full=True)
    annotated = studio.completed_annotations(ctx.project_id)
    assert len({a.task_id for a in annotated}) == len(annotated) == len(imported)  # every task verified once


def test_a_label_studio_outage_is_survived_without_a_manual_step(tmp_path, studio, label_studio, starter_model):
    ctx = new_context(tmp_path, studio, label_studio, scheduler__poll_seconds=0.2, learner__epochs=1,
                      scheduler__reconcile_seconds=0, scheduler__max_backoff_seconds=1.0,
                      learner__base_model=str(starter_model))
    ledger = ctx.ledger
    ledger.add_pool([{"text": "you idiot", "norm": "you idiot", "reference": "you are wrong"}])
    rounds.current_learner(ctx)
    rid = ledger.create_round(strategy="stratified", budget=1, learner_version="v0",
                              items=[{"pool_id": 1, "cluster": 0, "score": 0.9}])
    ledger.set_drafts(rid, {1: Draft("k", "you are wrong")})
    ledger.set_round_state(rid, "distilled")
    scheduler = Scheduler(ctx)
    scheduler.start()
    try:
        wait_for(lambda: ledger.get_round(rid)["state"] == "verifying", 60, "the batch to be imported")
        task_id = ledger.batch(rid)[0]["task_id"]

        localstudio.stop(label_studio)
        wait_for(lambda: scheduler.failures >= 2, 60, "the scheduler to notice the outage")
        assert ledger.get_round(rid)["error"]  # the failure is on the round for the status page

        restarted = localstudio.start(label_studio.data_dir, port=int(label_studio.url.rsplit(":", 1)[1]))
        label_studio.pid, label_studio._proc = restarted.pid, restarted._proc  # the session fixture stops it
        studio.annotate(task_id, verdict="accept", text="you are wrong")
        wait_for(lambda: ledger.get_round(rid)["state"] == "done" and scheduler.failures == 0, 120,
                 "recovery, the sync and training")
        assert ledger.get_round(rid)["error"] is None
        assert [v["verdict"] for v in ledger.verifications(rid)] == ["accept"]
    finally:
        scheduler.stop()
