"""The round state machine in seconds, on the in-memory Label Studio: every state, every crash point.

The real-server tests (test_e2e.py, test_reliability.py) stay; these pin each move of `advance`
and what a failure at each Label Studio call or state write leaves behind, without a server.
"""

from __future__ import annotations

from collections import Counter

import pytest

from loop import rounds
from loop.config import load_settings
from loop.errors import StudioError
from loop.ledger import Ledger
from loop.service import ensure_pool
from tests.support import settle
from tests.support.memstudio import MemStudio


@pytest.fixture
def ctx(tmp_path, small_pool, starter_model) -> rounds.Context:
    settings = load_settings(
        data_dir=str(tmp_path / "labelloop"), pool__path=str(small_pool), learner__base_model=str(starter_model),
        learner__epochs=1, cluster__k=3, select__budget=6, team__lookahead=0,  # one batch at a time
    )
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    studio = MemStudio()
    project = studio.ensure_project("rounds", settings.label_config_path.read_text())
    return rounds.Context(settings, ledger, studio, project_id=project)


def annotate_all(ctx: rounds.Context, round_id: int) -> None:
    """Verify every imported task of a round once (accept, edit and reject in turn), each followed by
    the webhook Label Studio delivers to the backend, which records it in the ledger."""
    verdicts = ("accept", "edit", "reject")
    for i, item in enumerate(b for b in ctx.ledger.batch(round_id) if b["task_id"]):
        verdict = verdicts[i % 3]
        text = item["draft"] + " (edited)" if verdict == "edit" else item["draft"]
        annotation = ctx.studio.annotate(item["task_id"], verdict=verdict, text=text)
        ctx.ledger.record_event("ANNOTATION_CREATED", ctx.project_id, item["task_id"], annotation)


def test_one_round_walks_every_state_and_reports_typed_steps(ctx):
    steps = [rounds.advance(ctx) for _ in range(4)]
    assert [(s.kind, s.round_id, s.state) for s in steps] == [
        ("moved", 1, "selected"), ("moved", 1, "distilled"), ("moved", 1, "imported"), ("waiting", 1, "verifying"),
    ]
    assert steps[-1].settled and str(steps[-1]) == "waiting: round 1 verified 0/6"
    assert rounds.advance(ctx).kind == "waiting"  # nothing changes until people verify
    annotate_all(ctx, 1)
    training = rounds.advance(ctx)
    assert (training.kind, training.state, training.message) == ("moved", "training", "round 1: all 6 verified")
    done = rounds.advance(ctx)
    assert (done.kind, done.state) == ("moved", "done") and done.message.endswith("learner v1")
    assert ctx.ledger.find_current_model()["version"] == "v1"
    nxt = rounds.advance(ctx)
    assert (nxt.kind, nxt.round_id, nxt.state) == ("moved", 2, "selected")


def test_idle_once_max_rounds_are_done(ctx):
    ctx.settings.select.max_rounds = 1
    assert settle(ctx).kind == "waiting"
    annotate_all(ctx, 1)
    step = settle(ctx)
    assert (step.kind, step.message) == ("idle", "idle: max_rounds reached")
    assert [r["state"] for r in ctx.ledger.rounds()] == ["done"]


def test_idle_when_the_pool_is_exhausted(ctx):
    ctx.settings.select.budget = 100  # more than the 60 items: one round takes them all
    settle(ctx)
    annotate_all(ctx, 1)
    step = settle(ctx)
    assert (step.kind, step.message) == ("idle", "idle: pool exhausted")


def assert_consistent(ctx: rounds.Context) -> None:
    """What any interrupted run must leave: one task per item, ids that agree, each verification once,
    one trained version per round."""
    tasks = ctx.studio.tasks(ctx.project_id)
    keys = Counter(t["data"]["labelloop_key"] for t in tasks)
    assert all(n == 1 for n in keys.values()), f"duplicated tasks: {keys}"
    ledger_ids = {rounds.task_key(b["round_id"], b["pool_id"]): b["task_id"]
                  for r in ctx.ledger.rounds() for b in ctx.ledger.batch(r["id"]) if b["task_id"]}
    assert ledger_ids == {t["data"]["labelloop_key"]: t["id"] for t in tasks}
    assert len(ctx.ledger.verifications()) == len(ctx.studio.completed_annotations(ctx.project_id))
    trained = Counter(v["round_id"] for v in ctx.ledger.model_versions() if v["round_id"] is not None)
    assert all(n == 1 for n in trained.values())


# Each Label Studio call a round makes, failing before it takes effect, or after (the answer was lost).
STUDIO_FAULTS = [("import_batch", False), ("import_batch", True),
                 ("annotations_for_tasks", False), ("annotations_for_tasks", True),
                 ("completed_annotations", False), ("completed_annotations", True)]
SYNC_CALLS = ("annotations_for_tasks", "completed_annotations")


@pytest.mark.parametrize(("method", "after"), STUDIO_FAULTS, ids=[f"{m}-{'after' if a else 'before'}"
                                                                     for m, a in STUDIO_FAULTS])
def test_a_failed_label_studio_call_resumes_without_loss_or_duplicates(ctx, method, after):
    if method in SYNC_CALLS:  # a fault at the sync that closes the round: by webhook, or the full one
        settle(ctx)
        annotate_all(ctx, 1)
        if method == "completed_annotations":
            ctx.settings.scheduler.reconcile_seconds = 0
    ctx.studio.fail_next(method, after=after)
    with pytest.raises(StudioError):
        settle(ctx)
    settle(ctx)  # the next tick resumes from the persisted state
    if method not in SYNC_CALLS:
        annotate_all(ctx, 1)
        settle(ctx)
    assert [r["state"] for r in ctx.ledger.rounds()][:1] == ["done"]
    assert len(ctx.ledger.verifications(1)) == 6
    assert_consistent(ctx)


@pytest.mark.parametrize("state", ["distilled", "imported", "verifying", "training", "done"])
def test_a_crash_before_a_state_is_saved_redoes_the_step_without_duplicates(ctx, state, monkeypatch):
    """The work of a step is done, then the process dies before the round's new state is written."""
    real = ctx.ledger.set_round_state
    crashed = []

    def crash_once(round_id, new_state, **kw):
        if new_state == state and not crashed:
            crashed.append(new_state)
            raise KeyboardInterrupt(f"killed before round {round_id} became {new_state}")
        return real(round_id, new_state, **kw)

    monkeypatch.setattr(ctx.ledger, "set_round_state", crash_once)
    if state in ("training", "done"):
        settle(ctx)
        annotate_all(ctx, 1)
    with pytest.raises(KeyboardInterrupt):
        settle(ctx)
    assert crashed == [state]
    settle(ctx)
    if state not in ("training", "done"):
        annotate_all(ctx, 1)
        settle(ctx)
    assert ctx.ledger.get_round(1)["state"] == "done"
    assert [v["version"] for v in ctx.ledger.model_versions()] == ["v0", "v1"]
    assert_consistent(ctx)


def test_a_deleted_annotation_is_withdrawn_and_holds_the_round_open(ctx):
    settle(ctx)
    annotate_all(ctx, 1)
    first = ctx.studio.completed_annotations(ctx.project_id)[0]
    ctx.studio.delete_annotation(first.annotation_id)
    ctx.ledger.record_event("ANNOTATIONS_DELETED", ctx.project_id, first.task_id, first.annotation_id)
    step = settle(ctx)
    assert (step.kind, step.message) == ("waiting", "waiting: round 1 verified 5/6")
    assert len(ctx.ledger.verifications(1)) == 5


def test_edits_and_deletions_reach_the_ledger_after_the_last_round(ctx):
    """Once the loop is idle (max_rounds), later verifications still sync, so exports do not go stale."""
    ctx.settings.select.max_rounds = 1
    settle(ctx)
    annotate_all(ctx, 1)
    assert settle(ctx).message == "idle: max_rounds reached"
    first, second = ctx.studio.completed_annotations(ctx.project_id)[:2]
    ctx.studio.update_annotation(first.annotation_id, verdict="edit", text="a later, better reply")
    ctx.ledger.record_event("ANNOTATION_UPDATED", ctx.project_id, first.task_id, first.annotation_id)
    ctx.studio.delete_annotation(second.annotation_id)
    ctx.ledger.record_event("ANNOTATIONS_DELETED", ctx.project_id, second.task_id, second.annotation_id)
    assert settle(ctx).kind == "idle"
    by_id = {v["annotation_id"]: v for v in ctx.ledger.verifications(1)}
    assert by_id[first.annotation_id]["target"] == "a later, better reply"
    assert second.annotation_id not in by_id


def test_a_lost_project_is_not_replaced_once_rounds_were_imported_into_it(ctx):
    """A 404 for the stored project must not start an empty replacement that withdraws every verification."""
    from loop.errors import ServiceError
    from loop.service import connect_project

    settle(ctx)  # round 1 is imported into the project
    ctx.ledger.set_meta("project_id", str(ctx.project_id))
    fresh = MemStudio()  # the server's data was reset: the project is gone
    lost = rounds.Context(ctx.settings, ctx.ledger, fresh)
    with pytest.raises(ServiceError, match=f"has no project {ctx.project_id}, which holds the ledger's rounds 1"):
        connect_project(lost, "http://127.0.0.1:9")
    assert [name for name, _ in fresh.calls] == ["counts"]  # it looked, and created nothing
    ctx.settings.studio.project_id = ctx.project_id + 1  # the settings point elsewhere
    with pytest.raises(ServiceError, match=f"set studio.project_id = {ctx.project_id}"):
        connect_project(rounds.Context(ctx.settings, ctx.ledger, ctx.studio), "http://127.0.0.1:9")
    assert len(ctx.ledger.verifications()) == 0 and ctx.ledger.get_round(1)["project_id"] == ctx.project_id


def test_a_permanent_error_stops_the_run_at_once_with_its_cause(ctx, tmp_path):
    """A learner that cannot be loaded is not retried tick after tick: the run stops, saying why and what to do."""
    from loop.scheduler import Scheduler, tick

    ctx.settings.learner.base_model = str(tmp_path / "no-such-checkpoint")
    step = tick(ctx)[-1]
    assert step.kind == "stopped" and step.settled
    assert "no checkpoint directory there" in step.message and "give the path of a directory" in step.message
    scheduler = Scheduler(ctx)
    scheduler.start()
    try:
        assert scheduler.done.wait(60), "the scheduler did not stop on a permanent error"
    finally:
        scheduler.stop()
    assert "LearnerError: learner model" in scheduler.stopped_with and scheduler.failures == 0
    assert ctx.ledger.rounds() == []  # nothing was selected, nothing half-done


def test_a_transient_error_is_retried(ctx):
    from loop.scheduler import tick

    settle(ctx)
    annotate_all(ctx, 1)
    ctx.studio.fail_next("annotations_for_tasks")  # a 503: the next tick retries
    assert tick(ctx)[-1].kind == "error"
    assert [s.kind for s in tick(ctx)][-1] == "waiting"


def test_tasks_carry_subgroup_and_learner_version_and_a_studio_export_keeps_them(tmp_path, starter_model):
    """Label Studio's copy of a task names its group, and `export --from-studio` reports it (was null)."""
    from loop import export

    pool = tmp_path / "groups.tsv"
    pool.write_text("text\treference\tgroup\n" + "".join(
        f"you idiot number {i}\tplease, number {i}\t{'women' if i % 2 else 'immigrants'}\n" for i in range(12)))
    settings = load_settings(data_dir=str(tmp_path / "labelloop"), pool__path=str(pool), pool__group_col="group",
                             learner__base_model=str(starter_model), cluster__k=2, select__budget=4,
                             team__lookahead=0)  # one batch of 4 at a time
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    studio = MemStudio()
    ctx = rounds.Context(settings, ledger, studio,
                         project_id=studio.ensure_project("groups", settings.label_config_path.read_text()))
    settle(ctx)
    data = [t["data"] for t in studio.tasks(ctx.project_id)]
    assert len(data) == 4 and {d["subgroup"] for d in data} <= {"women", "immigrants"}
    assert {d["learner_version"] for d in data} == {"v0"}
    annotate_all(ctx, 1)
    records = export.from_studio(studio, ctx.project_id, salt="s", verdicts=None)
    assert len(records) == 4 and all(r["subgroup"] in ("women", "immigrants") for r in records)
    assert {r["learner_version"] for r in records} == {"v0"}


def test_a_text_in_two_groups_carries_both_to_its_task(tmp_path, starter_model):
    """A text listed under two groups is one item whose task names both (it was one group, the first)."""
    pool = tmp_path / "groups.tsv"
    pool.write_text("text\treference\tgroup\n" + "".join(
        f"you idiot number {i}\tplease, number {i}\t{g}\n" for i in range(4) for g in ("women", "immigrants")))
    settings = load_settings(data_dir=str(tmp_path / "labelloop"), pool__path=str(pool), pool__group_col="group",
                             learner__base_model=str(starter_model), cluster__k=2, select__budget=4)
    ledger = Ledger(settings.ledger_path)
    assert ensure_pool(settings, ledger)["merged"] == 4
    studio = MemStudio()
    ctx = rounds.Context(settings, ledger, studio,
                         project_id=studio.ensure_project("groups", settings.label_config_path.read_text()))
    settle(ctx)
    data = [t["data"] for t in studio.tasks(ctx.project_id)]
    assert len(data) == 4
    assert all(d["subgroups"] == ["women", "immigrants"] and d["subgroup"] == "women, immigrants" for d in data)
