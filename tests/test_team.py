"""A real annotation team: skips, deadlines, overlap and agreement.

Round logic runs on the in-memory Label Studio (milliseconds); what Label Studio itself must do (a
skip by another user, the overlap setting, several people on one task) runs through the real server
of the session, with users created through its API.
"""

from __future__ import annotations

import uuid

import pytest

from loop import export, rounds, status
from loop.config import load_settings
from loop.ledger import Ledger
from loop.service import ensure_pool
from tests.support import settle
from tests.support.memstudio import MemStudio


def make_ctx(tmp_path, small_pool, starter_model, studio, **team) -> rounds.Context:
    team.setdefault("lookahead", 0)  # one batch at a time, unless a test asks for the look-ahead
    settings = load_settings(
        data_dir=str(tmp_path / "labelloop"), pool__path=str(small_pool), learner__base_model=str(starter_model),
        learner__epochs=1, cluster__k=3, select__budget=6, scheduler__reconcile_seconds=0,
        **{f"team__{k}": v for k, v in team.items()},
    )
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    project = studio.ensure_project(f"team {uuid.uuid4().hex[:8]}", settings.label_config_path.read_text())
    return rounds.Context(settings, ledger, studio, project_id=project)


@pytest.fixture
def mem_ctx(tmp_path, small_pool, starter_model):
    return lambda **team: make_ctx(tmp_path, small_pool, starter_model, MemStudio(), **team)


def advance_until(ctx: rounds.Context, state: str, limit: int = 10) -> rounds.Step:
    for _ in range(limit):
        step = rounds.advance(ctx)
        if step.state == state:
            return step
    raise AssertionError(f"round never reached {state!r}")


def verify(ctx: rounds.Context, item: dict, verdict: str = "accept", user: int | None = None) -> int:
    text = item["draft"] + " (edited)" if verdict == "edit" else item["draft"]
    return ctx.studio.annotate(item["task_id"], verdict=verdict, text=text, user_id=user)


# ------------------------------------------------------------------------------------------------ skips


def test_a_skipped_task_no_longer_stalls_the_round_and_is_counted_everywhere(mem_ctx):
    ctx = mem_ctx()
    assert settle(ctx).message == "waiting: round 1 verified 0/6"
    batch = ctx.ledger.batch(1)
    carol = ctx.studio.ensure_user("carol@example.org")
    for item in batch[1:]:
        verify(ctx, item)
    ctx.studio.skip(batch[0]["task_id"], user_id=carol)
    step = rounds.advance(ctx)  # before: "waiting: round 1 verified 5/6" for ever
    assert (step.kind, step.state) == ("moved", "training")
    assert step.message == "round 1: closed (complete), 5 verified, 1 skipped (retired), 0 still open"
    assert ctx.ledger.get_round(1)["closed_reason"] == "complete"

    facts = status.facts(ctx.ledger)
    assert (facts["rounds"][0]["skipped"], facts["rounds"][0]["remaining"]) == (1, 0)
    cluster = next(c for c in facts["clusters"] if c["cluster"] == batch[0]["cluster"])
    assert cluster["skipped"] == 1 and cluster["skip_rate"] == pytest.approx(1 / cluster["imported"])
    people = {a["annotator"]: a for a in facts["annotation"]["annotators"]}
    carol_id = status.anonymise("carol@example.org", ctx.ledger.annotator_salt())
    assert people[carol_id]["skips"] == 1 and people[carol_id]["annotations"] == 0
    assert facts["annotation"]["overall"]["skips"] == 1
    # retired (the default): never selected again
    assert batch[0]["pool_id"] not in ctx.ledger.unsent_pool_ids()


def test_the_return_policy_puts_a_skipped_item_back_into_the_pool_for_a_later_round(mem_ctx):
    ctx = mem_ctx(skip_policy="return")
    settle(ctx)
    batch = ctx.ledger.batch(1)
    skipped = batch[0]["pool_id"]
    for item in batch[1:]:
        verify(ctx, item)
    ctx.studio.skip(batch[0]["task_id"])
    step = rounds.advance(ctx)
    assert step.message.endswith("1 skipped (returned to the pool), 0 still open")
    assert skipped in ctx.ledger.unsent_pool_ids()
    assert status.facts(ctx.ledger)["rounds"][0]["returned"] == 1
    # the item can sit in a later round's batch (the one-batch-at-a-time index allows a returned item)
    ctx.ledger.create_round(strategy="stratified", budget=1, learner_version="v0",
                            items=[{"pool_id": skipped, "cluster": 0, "score": 1.0}])
    assert skipped not in ctx.ledger.unsent_pool_ids()


def test_a_skip_resubmitted_as_a_verdict_is_withdrawn_and_a_late_verdict_still_counts(mem_ctx):
    ctx = mem_ctx()
    settle(ctx)
    batch = ctx.ledger.batch(1)
    skip = ctx.studio.skip(batch[0]["task_id"])
    assert "1 skipped" in settle(ctx).message
    ctx.studio.update_annotation(skip, verdict="accept", text=batch[0]["draft"])
    assert "skipped" not in settle(ctx).message  # the skip became a verdict: no longer counted as one
    assert ctx.ledger.skips() == [] and status.facts(ctx.ledger)["rounds"][0]["verified"] == 1


def test_export_carries_how_many_skipped_an_item(mem_ctx):
    ctx = mem_ctx()
    settle(ctx)
    batch = ctx.ledger.batch(1)
    ctx.studio.skip(batch[0]["task_id"], user_id=ctx.studio.ensure_user("dan@example.org"))
    verify(ctx, batch[0])  # someone else verified it after the skip
    verify(ctx, batch[1])
    settle(ctx)
    records = {r["id"]: r for r in export.from_ledger(ctx.ledger)}
    assert records[f"r1-p{batch[0]['pool_id']}"]["skips"] == 1
    assert records[f"r1-p{batch[1]['pool_id']}"]["skips"] == 0


def test_a_skip_by_another_user_in_the_real_label_studio_closes_the_round(tmp_path, small_pool, starter_model,
                                                                          studio):
    ctx = make_ctx(tmp_path, small_pool, starter_model, studio)
    assert settle(ctx).message == "waiting: round 1 verified 0/6"
    batch = ctx.ledger.batch(1)
    erin = studio.ensure_user(f"erin-{uuid.uuid4().hex[:6]}@example.org")
    for item in batch[1:]:
        verify(ctx, item)
    studio.skip(batch[0]["task_id"], user_id=erin)
    assert studio.counts(ctx.project_id)["skipped_annotations_number"] == 1
    step = rounds.advance(ctx)
    assert (step.state, step.message) == ("training", "round 1: closed (complete), 5 verified, 1 skipped (retired),"
                                                      " 0 still open")
    skips = ctx.ledger.skips()
    assert [(k["task_id"], k["annotator"].startswith("erin-")) for k in skips] == [(batch[0]["task_id"], True)]


def test_the_dashboard_and_metrics_show_skips_per_round_cluster_and_annotator(mem_ctx):
    from ml_backend.app import create_app

    ctx = mem_ctx()
    settle(ctx)
    batch = ctx.ledger.batch(1)
    ctx.studio.skip(batch[0]["task_id"], user_id=ctx.studio.ensure_user("fay@example.org"))
    settle(ctx)
    client = create_app(ctx.settings, ctx.ledger).test_client()
    page = client.get("/dashboard").get_data(as_text=True)
    assert '<div class="v" id="current-skipped">1</div>' in page and '<td class="skips">1</td>' in page
    metrics = client.get("/metrics").get_data(as_text=True)
    fay = status.anonymise("fay@example.org", ctx.ledger.annotator_salt())
    assert 'labelloop_batch_items{stage="skipped"} 1.0' in metrics
    assert f'labelloop_skipped_items{{cluster="{batch[0]["cluster"]}",round="1"}} 1.0' in metrics
    assert f'labelloop_annotator_skips{{annotator="{fay}"}} 1.0' in metrics


# --------------------------------------------------------------------------------------------- deadlines


def past(hours: float = 1.0) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) - timedelta(hours=hours)).isoformat(timespec="seconds")


def test_a_round_closes_at_its_deadline_and_later_verdicts_still_count(mem_ctx):
    ctx = mem_ctx(deadline_hours=24)
    waiting = settle(ctx)
    deadline = ctx.ledger.get_round(1)["deadline_at"]
    assert deadline is not None and waiting.message == f"waiting: round 1 verified 0/6, deadline {deadline}"
    batch = ctx.ledger.batch(1)
    verify(ctx, batch[0])
    verify(ctx, batch[1], "edit")
    ctx.studio.skip(batch[2]["task_id"])
    assert rounds.advance(ctx).kind == "waiting"  # before the deadline the round waits
    ctx.ledger.set_round_deadline(1, past())
    step = rounds.advance(ctx)
    assert (step.state, step.message) == ("training", "round 1: closed (deadline), 2 verified, 1 skipped (retired),"
                                                      " 3 still open")
    assert ctx.ledger.get_round(1)["closed_reason"] == "deadline"
    assert rounds.advance(ctx).state == "done"
    assert len(ctx.ledger.verified_pairs()) == 2
    # a straggler verifies an open task of the closed round: it counts, and blocks nothing
    verify(ctx, batch[3])
    step = rounds.advance(ctx)
    assert (step.round_id, step.state) == (2, "selected")
    facts = status.facts(ctx.ledger)
    assert (facts["rounds"][0]["verified"], facts["rounds"][0]["remaining"]) == (3, 2)
    assert len(ctx.ledger.verified_pairs()) == 3


def test_without_a_deadline_a_round_waits_for_every_task(mem_ctx):
    ctx = mem_ctx()
    settle(ctx)
    verify(ctx, ctx.ledger.batch(1)[0])
    assert settle(ctx).message == "waiting: round 1 verified 1/6"
    assert ctx.ledger.get_round(1)["deadline_at"] is None


def test_a_deadline_passes_in_the_real_label_studio(tmp_path, small_pool, starter_model, studio):
    ctx = make_ctx(tmp_path, small_pool, starter_model, studio, deadline_hours=8)
    settle(ctx)
    batch = ctx.ledger.batch(1)
    verify(ctx, batch[0], "reject")
    verify(ctx, batch[1])
    ctx.ledger.set_round_deadline(1, past())
    step = rounds.advance(ctx)
    assert step.message == "round 1: closed (deadline), 2 verified, 0 skipped (retired), 4 still open"
    assert studio.counts(ctx.project_id)["task_number"] == 6  # the open tasks stay in Label Studio
    assert rounds.advance(ctx).state == "done"
    verify(ctx, batch[2], "edit")  # verified after the close
    assert rounds.advance(ctx).round_id == 2
    assert status.facts(ctx.ledger)["rounds"][0]["verified"] == 3


def test_a_lead_sets_and_clears_a_deadline_from_the_command_line(mem_ctx):
    from click.testing import CliRunner

    from loop.cli import main

    ctx = mem_ctx()
    settle(ctx)
    config = ctx.settings.data_dir / "team.json"
    config.write_text(ctx.settings.model_dump_json())
    out = CliRunner().invoke(main, ["-c", str(config), "deadline", "1", "--hours", "2"])
    assert out.exit_code == 0 and out.output.startswith("round 1: closes at ")
    assert ctx.ledger.get_round(1)["deadline_at"] is not None
    assert ", deadline " in settle(ctx).message
    out = CliRunner().invoke(main, ["-c", str(config), "deadline", "1", "--clear"])
    assert (out.exit_code, out.output.strip()) == (0, "round 1: no deadline")
    assert settle(ctx).message == "waiting: round 1 verified 0/6"
    out = CliRunner().invoke(main, ["-c", str(config), "deadline", "9", "--hours", "1"])
    assert out.exit_code == 1 and "no round 9" in out.output


# -------------------------------------------------------------------------------------------- throughput


def _times(ledger: Ledger, stamps: list[tuple[str, str]], annotator: str = "gil@example.org") -> None:
    """Verifications of round 1's batch by one annotator at the given (created_at, updated_at)."""
    batch = ledger.batch(1)
    ledger.record_verifications([
        {"annotation_id": 100 + i, "task_id": item["task_id"], "round_id": 1, "pool_id": item["pool_id"],
         "verdict": "accept", "target": item["draft"], "updated_at": updated, "created_at": created,
         "annotator": annotator, "lead_time": 1.0}
        for i, (item, (created, updated)) in enumerate(zip(batch, stamps, strict=False))
    ])


@pytest.mark.parametrize(("stamps", "rate"), [
    # one annotation in 26 microseconds: was 138,461,538 per hour
    ([("2026-03-01T09:00:00.000000Z", "2026-03-01T09:00:00.000026Z")], None),
    # three in two minutes: too short a span to extrapolate to an hour
    ([("2026-03-01T09:00:00Z", "2026-03-01T09:00:30Z"), ("2026-03-01T09:01:00Z", "2026-03-01T09:01:30Z"),
      ("2026-03-01T09:01:40Z", "2026-03-01T09:02:00Z")], None),
    # three over twenty minutes: 9 per hour
    ([("2026-03-01T09:00:00Z", "2026-03-01T09:01:00Z"), ("2026-03-01T09:10:00Z", "2026-03-01T09:11:00Z"),
      ("2026-03-01T09:19:00Z", "2026-03-01T09:20:00Z")], 9.0),
])
def test_throughput_is_given_only_over_a_span_that_means_something(mem_ctx, stamps, rate):
    from ml_backend.app import create_app

    ctx = mem_ctx()
    settle(ctx)
    _times(ctx.ledger, stamps)
    facts = status.facts(ctx.ledger)
    [person] = facts["annotation"]["annotators"]
    assert person["per_hour"] == rate and facts["annotation"]["overall"]["per_hour"] == rate
    assert facts["estimate"]["per_hour"] == rate and (facts["estimate"]["eta"] is None) == (rate is None)
    page = create_app(ctx.settings, ctx.ledger).test_client().get("/dashboard").get_data(as_text=True)
    assert f'<td class="per-hour">{rate if rate is not None else "too few to rate"}</td>' in page


# ------------------------------------------------------------------------------- overlap and agreement


def vote(annotation_id: int, annotator: str, verdict: str, target: str | None = "t") -> dict:
    return {"annotation_id": annotation_id, "annotator": annotator, "verdict": verdict,
            "target": None if verdict == "reject" else target, "updated_at": None}


@pytest.mark.parametrize(("rows", "skips", "quota", "want"), [
    # one person per task: the latest verdict decides (a correction by the same or another person)
    ([vote(1, "a", "accept"), vote(2, "b", "edit", "new")], 0, 1, ("decided", "edit", "new")),
    # two wanted, one so far: open; with the other's skip it settles on the one verdict
    ([vote(1, "a", "accept")], 0, 2, ("open", None, None)),
    ([vote(1, "a", "accept")], 1, 2, ("decided", "accept", "t")),
    # two who disagree: a tie goes to adjudication, accept vs edit included
    ([vote(1, "a", "accept"), vote(2, "b", "reject")], 0, 2, ("adjudicate", None, None)),
    ([vote(1, "a", "accept"), vote(2, "b", "edit", "x")], 0, 2, ("adjudicate", None, None)),
    # three: a majority wins, its latest edit is the target; an accept/edit/reject split is adjudicated
    ([vote(1, "a", "edit", "x"), vote(2, "b", "accept"), vote(3, "c", "edit", "y")], 0, 3, ("decided", "edit", "y")),
    ([vote(1, "a", "edit", "x"), vote(2, "b", "accept"), vote(3, "c", "reject")], 0, 3, ("adjudicate", None, None)),
    ([vote(1, "a", "reject"), vote(2, "b", "reject"), vote(3, "c", "edit", "y")], 0, 3, ("decided", "reject", None)),
    # one person's two annotations are one vote (their newest)
    ([vote(1, "a", "reject"), vote(2, "a", "accept"), vote(3, "b", "accept")], 0, 2, ("decided", "accept", "t")),
    # the adjudicator decides outright, whatever the votes
    ([vote(1, "a", "accept"), vote(2, "b", "reject"), vote(3, "Lead@x.org", "edit", "z")], 0, 2,
     ("decided", "edit", "z")),
    ([], 2, 2, ("skipped", None, None)),
])
def test_the_verdict_rule(rows, skips, quota, want):
    from loop.team import decide

    d = decide(rows, skips, quota, adjudicators=["lead@x.org"])
    assert (d.status, d.verdict, d.target) == want


def test_overlap_two_majority_adjudication_and_agreement_on_the_memory_studio(mem_ctx):
    import krippendorff
    import numpy as np

    ctx = mem_ctx(overlap=2, adjudicators=["lead@example.org"])
    assert settle(ctx).message == "waiting: round 1 verified 0/6"
    assert ctx.studio.overlap(ctx.project_id) == 2  # Label Studio's maximum_annotations follows team.overlap
    batch = ctx.ledger.batch(1)
    ann, bob, lead = (ctx.studio.ensure_user(f"{n}@example.org") for n in ("ann", "bob", "lead"))
    a_votes = ["accept", "edit", "reject", "accept", "accept", "edit"]
    b_votes = ["accept", "edit", "reject", "reject", "reject", "accept"]
    for item, verdict in zip(batch, a_votes, strict=True):
        verify(ctx, item, verdict, ann)
    assert settle(ctx).message == "waiting: round 1 verified 0/6"  # each task wants a second person
    for item, verdict in zip(batch, b_votes, strict=True):
        verify(ctx, item, verdict, bob)
    assert rounds.advance(ctx).message == "round 1: all 6 verified"  # settled; 3 ties wait for the lead

    facts = status.facts(ctx.ledger)
    assert (facts["rounds"][0]["verified"], facts["rounds"][0]["adjudicate"]) == (3, 3)
    waiting = {a["task_id"]: a for a in facts["adjudication"]}
    assert sorted(waiting) == sorted(b["task_id"] for b in batch[3:])
    t3 = batch[3]["task_id"]
    assert waiting[t3]["votes"] == "accept:1,reject:1"
    assert waiting[t3]["link"] == f"mem://label-studio/projects/{ctx.project_id}/data?task={t3}"
    code = {"accept": 0, "edit": 1, "reject": 2}
    expected = krippendorff.alpha(reliability_data=np.array([[code[v] for v in a_votes], [code[v] for v in b_votes]]),
                                  level_of_measurement="nominal", value_domain=[0, 1, 2])
    agreement = facts["agreement"]
    assert agreement["overall"] == {"units": 6, "alpha": round(expected, 4)}
    assert agreement["rounds"] == [{"round": 1, "units": 6, "alpha": round(expected, 4)}]
    [pair] = agreement["pairs"]
    assert (pair["units"], pair["agree"], pair["alpha"]) == (6, 3, round(expected, 4))
    assert sum(c["units"] for c in agreement["clusters"]) == 6
    assert len(ctx.ledger.verified_pairs()) == 2  # the accept and the edit; ties are no pair yet
    from click.testing import CliRunner

    from loop.cli import main

    config = ctx.settings.data_dir / "team.json"
    config.write_text(ctx.settings.model_dump_json())
    shown = CliRunner().invoke(main, ["-c", str(config), "status"], terminal_width=250).output
    assert "verified 3/6, 3 awaiting adjudication, 0 skipped, 0 remaining" in shown
    assert "awaiting adjudication (a tie or a split" in shown and f"data?task={t3}" in shown
    assert f"{expected:.3f}" in shown  # the alpha

    # the lead settles task 3 with an edit: it is decided, its target is the lead's, and alpha is unchanged
    ctx.studio.annotate(t3, verdict="edit", text="the lead's rewrite", user_id=lead)
    rounds.sync_verifications(ctx)
    facts = status.facts(ctx.ledger)
    assert sorted(a["task_id"] for a in facts["adjudication"]) == sorted(b["task_id"] for b in batch[4:])
    assert facts["agreement"]["overall"]["alpha"] == round(expected, 4)
    assert ("the lead's rewrite" in [t for _, t in ctx.ledger.verified_pairs()])
    records = {r["id"]: r for r in export.from_ledger(ctx.ledger)}
    settled = records[f"r1-p{batch[3]['pool_id']}"]
    assert (settled["verdict"], settled["target"], settled["decided_by"]) == ("edit", "the lead's rewrite",
                                                                              "adjudicator")
    assert (settled["annotations"], settled["votes"]) == (2, "accept:1,reject:1")
    agreed = records[f"r1-p{batch[1]['pool_id']}"]
    assert (agreed["decided_by"], agreed["annotations"], agreed["votes"]) == ("majority", 2, "edit:2")
    assert f"r1-p{batch[4]['pool_id']}" not in records  # still awaiting the lead: no verdict to export


def test_overlap_and_adjudication_through_the_real_label_studio(tmp_path, small_pool, starter_model, studio):
    from ml_backend.app import create_app

    tag = uuid.uuid4().hex[:6]
    ctx = make_ctx(tmp_path, small_pool, starter_model, studio, overlap=2, adjudicators=[f"lead-{tag}@example.org"])
    settle(ctx)
    assert studio._ls.projects.get(id=ctx.project_id).maximum_annotations == 2
    ann, bob, lead = (studio.ensure_user(f"{n}-{tag}@example.org") for n in ("ann", "bob", "lead"))
    batch = ctx.ledger.batch(1)
    for i, item in enumerate(batch):
        verify(ctx, item, "accept", ann)
        if i == 0:
            studio.skip(item["task_id"], user_id=bob)  # one of the two skipped: the other's verdict decides
        else:
            verify(ctx, item, "reject" if i == 1 else "accept", bob)
    step = rounds.advance(ctx)
    assert step.message == "round 1: all 6 verified"  # 5 by two people, 1 by one person and a skip
    facts = status.facts(ctx.ledger)
    [waiting] = facts["adjudication"]
    assert waiting["task_id"] == batch[1]["task_id"] and waiting["votes"] == "accept:1,reject:1"
    assert waiting["link"] == f"{studio.url}/projects/{ctx.project_id}/data?task={batch[1]['task_id']}"
    assert facts["agreement"]["overall"]["units"] == 5
    page = create_app(ctx.settings, ctx.ledger).test_client().get("/dashboard").get_data(as_text=True)
    assert f'<a href="{waiting["link"]}">{batch[1]["task_id"]}</a>' in page
    studio.annotate(batch[1]["task_id"], verdict="reject", text=batch[1]["draft"], user_id=lead)
    rounds.sync_verifications(ctx)
    assert status.facts(ctx.ledger)["adjudication"] == []
    decision = ctx.ledger.decisions(1)[(1, batch[1]["pool_id"])][1]
    assert (decision.verdict, decision.adjudicated) == ("reject", True)


# ------------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize(("method", "after"), [("skipped_annotations", False), ("skipped_annotations", True),
                                               ("gone_skips", False), ("gone_skips", True),
                                               ("set_overlap", False), ("set_overlap", True)])
def test_a_failed_team_call_resumes_and_counts_each_skip_once(mem_ctx, method, after):
    from loop.errors import StudioError

    ctx = mem_ctx(skip_policy="return")
    ctx.settings.select.max_rounds = 1  # no second round picks the returned items up again
    if method == "set_overlap":  # the call before the import
        ctx.studio.fail_next(method, after=after)
        with pytest.raises(StudioError):
            settle(ctx)
    settle(ctx)
    batch = ctx.ledger.batch(1)
    skips = [ctx.studio.skip(item["task_id"]) for item in batch[:2]]
    for item in batch[2:-1]:
        verify(ctx, item)
    if method == "gone_skips":  # asked only when a recorded skip is missing from a listing
        assert rounds.advance(ctx).message == "waiting: round 1 verified 3/6, 2 skipped"
        ctx.studio.delete_annotation(skips[1])
        verify(ctx, batch[1])
    if method != "set_overlap":
        ctx.studio.fail_next(method, after=after)
        with pytest.raises(StudioError):
            rounds.advance(ctx)
    verify(ctx, batch[-1])
    step = settle(ctx)
    assert [r["state"] for r in ctx.ledger.rounds()] == ["done"] and step.kind == "idle"
    want = 1 if method == "gone_skips" else 2
    assert len(ctx.ledger.skips()) == want
    returned = [b["pool_id"] for b in batch[:want]]
    assert sorted(set(returned) & set(ctx.ledger.unsent_pool_ids())) == sorted(returned)


def test_closing_applies_the_skip_policy_and_the_state_change_in_one_transaction(mem_ctx, monkeypatch):
    from loop.errors import StaleState
    from loop.ledger import Ledger as LedgerClass

    ctx = mem_ctx(skip_policy="return")
    settle(ctx)
    batch = ctx.ledger.batch(1)
    ctx.studio.skip(batch[0]["task_id"])
    for item in batch[1:]:
        verify(ctx, item)
    real = LedgerClass.set_round_state

    def lost_race(self, round_id, state, **kw):
        if state == "training":
            raise StaleState("another process moved it first")
        return real(self, round_id, state, **kw)

    monkeypatch.setattr(LedgerClass, "set_round_state", lost_race)
    with pytest.raises(StaleState):
        rounds.advance(ctx)
    assert batch[0]["pool_id"] not in ctx.ledger.unsent_pool_ids()  # the return was rolled back with it
    monkeypatch.undo()
    assert rounds.advance(ctx).state == "training"
    assert batch[0]["pool_id"] in ctx.ledger.unsent_pool_ids()


def test_the_demo_team_two_simulated_annotators_verify_every_task_and_one_skips(mem_ctx):
    import numpy as np

    from loop import annotators

    ctx = mem_ctx(overlap=2)
    settle(ctx)
    done: set = set()
    assert annotators.annotate_pending(ctx, np.random.default_rng(0), done=done, people=2, skip_one=True) == 12
    assert annotators.annotate_pending(ctx, np.random.default_rng(0), done=done, people=2, skip_one=True) == 0
    # a fresh `done` (a restarted demo) acts on nothing twice: the ledger knows who did what
    rounds.sync_verifications(ctx)
    assert ctx.ledger.get_round(1)["state"] == "verifying"
    assert annotators.annotate_pending(ctx, np.random.default_rng(1), people=2, skip_one=True) == 0
    step = rounds.advance(ctx)
    assert step.state == "training", step
    [skip] = ctx.ledger.skips()
    assert (skip["annotator"], skip["task_id"]) == ("annotator-1@labelloop.local", ctx.ledger.batch(1)[0]["task_id"])
    people = {v["annotator"] for v in ctx.ledger.verifications(1)}
    assert people == {"annotator-1@labelloop.local", "annotator-2@labelloop.local"}
    assert status.facts(ctx.ledger)["agreement"]["overall"]["units"] == 5


# -------------------------------------------------------------------------------------------- look-ahead


def open_tasks(ctx: rounds.Context) -> list[str]:
    """Every task key in the project, duplicates kept (the look-ahead must never add a second copy)."""
    return sorted(t["data"]["labelloop_key"] for t in ctx.studio.tasks(ctx.project_id))


def test_the_lookahead_is_on_by_default():
    from loop.config import TeamSettings

    assert TeamSettings().lookahead == 1


def test_the_lookahead_imports_the_next_batch_while_one_is_verified_and_the_one_after_uses_the_newest_learner(
        mem_ctx):
    from click.testing import CliRunner

    from loop.cli import main
    from ml_backend.app import create_app

    ctx = mem_ctx(lookahead=1)
    assert settle(ctx).message == "waiting: round 1 verified 0/6; look-ahead round 2 verified 0/6"
    first, second = ctx.ledger.batch(1), ctx.ledger.batch(2)
    assert all(b["task_id"] for b in first + second)  # both batches wait in Label Studio
    assert not {b["pool_id"] for b in first} & {b["pool_id"] for b in second}  # an open round's items are taken
    assert [(r["state"], r["learner_version"]) for r in ctx.ledger.rounds()] == [("verifying", "v0")] * 2
    facts = status.facts(ctx.ledger)
    assert facts["current"]["round"] == 1 and [(r["round"], r["state"]) for r in facts["lookahead"]] == [
        (2, "verifying")]
    client = create_app(ctx.settings, ctx.ledger).test_client()
    page = client.get("/dashboard").get_data(as_text=True)
    assert '<div class="v" id="lookahead-2">2: 0\n  / 6</div>' in page
    assert '<td class="state">verifying (look-ahead)</td>' in page and '<td class="state">verifying</td>' in page
    assert "labelloop_lookahead_rounds 1.0" in client.get("/metrics").get_data(as_text=True)
    config = ctx.settings.data_dir / "team.json"
    config.write_text(ctx.settings.model_dump_json())
    shown = CliRunner().invoke(main, ["-c", str(config), "status"], terminal_width=250).output
    assert "current round 1: verifying" in shown and "look-ahead round 2: verifying, verified 0/6" in shown

    # someone starts on the look-ahead before round 1 is done: it counts, and round 2 still closes after round 1
    verify(ctx, second[0], "edit")
    for item in first[:-1]:
        verify(ctx, item)
    assert settle(ctx).message == "waiting: round 1 verified 5/6; look-ahead round 2 verified 1/6"
    verify(ctx, first[-1])
    steps = [s.message for s in rounds.run_until_waiting(ctx)]
    assert steps == ["round 1: all 6 verified", "round 1: done, learner v1",
                     "round 3: selected (look-ahead: round 2 is being verified)", "round 3: distilled 6 (0 failed)",
                     "round 3: imported 6 tasks", "waiting: round 2 verified 1/6; look-ahead round 3 verified 0/6"]
    assert ctx.ledger.find_current_model()["pairs"] == 7  # round 1's six and the look-ahead's edit
    assert [r["learner_version"] for r in ctx.ledger.rounds()] == ["v0", "v0", "v1"]  # the newest learner
    keys = open_tasks(ctx)
    assert len(keys) == len(set(keys)) == 18


def test_without_a_lookahead_one_batch_at_a_time(mem_ctx):
    ctx = mem_ctx(lookahead=0)
    assert settle(ctx).message == "waiting: round 1 verified 0/6"
    assert [r["id"] for r in ctx.ledger.rounds()] == [1]
    for item in ctx.ledger.batch(1):
        verify(ctx, item)
    steps = [s.message for s in rounds.run_until_waiting(ctx)]
    assert steps == ["round 1: all 6 verified", "round 1: done, learner v1", "round 2: selected",
                     "round 2: distilled 6 (0 failed)", "round 2: imported 6 tasks", "waiting: round 2 verified 0/6"]
    assert [r["learner_version"] for r in ctx.ledger.rounds()] == ["v0", "v1"]


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_a_failed_lookahead_import_resumes_without_a_duplicate_task(mem_ctx, after):
    from loop.errors import StudioError

    ctx = mem_ctx(lookahead=1)
    steps = [rounds.advance(ctx).message for _ in range(5)]
    assert steps[3:] == ["round 2: selected (look-ahead: round 1 is being verified)", "round 2: distilled 6 (0 failed)"]
    ctx.studio.fail_next("import_batch", after=after)  # after: Label Studio has the tasks, the answer is lost
    with pytest.raises(StudioError):
        rounds.advance(ctx)
    assert ctx.ledger.get_round(2)["state"] == "distilled"
    assert settle(ctx).message == "waiting: round 1 verified 0/6; look-ahead round 2 verified 0/6"
    keys = open_tasks(ctx)
    assert len(keys) == len(set(keys)) == 12
    assert {t["data"]["labelloop_key"]: t["id"] for t in ctx.studio.tasks(ctx.project_id)} == {
        rounds.task_key(b["round_id"], b["pool_id"]): b["task_id"] for r in (1, 2) for b in ctx.ledger.batch(r)}


def test_the_lookahead_through_the_real_label_studio(tmp_path, small_pool, starter_model, studio):
    ctx = make_ctx(tmp_path, small_pool, starter_model, studio, lookahead=1)
    assert settle(ctx).message == "waiting: round 1 verified 0/6; look-ahead round 2 verified 0/6"
    assert studio.counts(ctx.project_id)["task_number"] == 12  # round 2 is there before round 1 is done
    for item in ctx.ledger.batch(1):
        verify(ctx, item)
    assert settle(ctx).message == "waiting: round 2 verified 0/6; look-ahead round 3 verified 0/6"
    assert [(r["state"], r["learner_version"]) for r in ctx.ledger.rounds()] == [
        ("done", "v0"), ("verifying", "v0"), ("verifying", "v1")]
    ledger_keys = {rounds.task_key(r["id"], b["pool_id"]): b["task_id"]
                   for r in ctx.ledger.rounds() for b in ctx.ledger.batch(r["id"])}
    assert studio.existing_keys(ctx.project_id) == ledger_keys and len(ledger_keys) == 18
    assert studio.counts(ctx.project_id)["task_number"] == 18  # no second copy of any task
