"""`loop.predictions.predictions_for` against a real temporary ledger: stored drafts by task id and by
key, misses answered in one live teacher batch (recorded with no pool id), one result per task in order."""

from __future__ import annotations

import sqlite3

import pytest

from loop.ledger import Ledger
from loop.predictions import LazyTeacher, prediction, predictions_for
from loop.teacher import Draft, ReferenceTeacher, load_template

VERSION = "reference|style_transfer@1"  # what the round's drafts were written by
LIVE = "reference"  # a replayed reference: people wrote it, no template did


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_pool([{"text": f"text {i}", "norm": f"text {i}", "reference": f"ref {i}"} for i in range(3)])
    rid = ledger.create_round(
        strategy="stratified", budget=2, learner_version="v0",
        items=[{"pool_id": 1, "cluster": 0, "score": 0.8}, {"pool_id": 2, "cluster": 1, "score": 0.4}],
    )
    ledger.set_drafts(rid, {1: Draft("k1", "draft one"), 2: Draft("k2", "draft two")})
    ledger.set_task_ids(rid, {1: 101})  # pool item 2 was never imported: only its key finds it
    ledger.set_meta(f"round:{rid}:model_version", VERSION)
    return ledger


class Live:
    """The reference teacher behind a counter: how often predictions_for asked for it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return ReferenceTeacher(), load_template("style_transfer")


def texts(results: list[dict]) -> list[str | None]:
    return [r["result"][0]["value"]["text"][0] if r["result"] else None for r in results]


def test_stored_drafts_by_task_id_and_by_key_need_no_teacher(ledger):
    live = Live()
    tasks = [{"id": 101, "data": {}}, {"id": 7, "data": {"labelloop_key": "r1-p2"}},
             {"data": {"labelloop_key": "r1-p1", "text": "ignored"}}]
    results = predictions_for(ledger, tasks, live=live)
    assert texts(results) == ["draft one", "draft two", "draft one"]
    assert results[0] == prediction("draft one", 0.8, VERSION)
    assert results[1]["score"] == pytest.approx(0.4) and results[1]["model_version"] == VERSION
    assert live.calls == 0
    assert ledger.teacher_usage()["calls"] == ledger.teacher_usage()["cached"] == 0


def test_misses_go_to_the_teacher_in_one_batch_and_keep_their_places(ledger):
    live = Live()
    tasks = [{"id": 555, "data": {"text": "never seen", "reference": "a rewrite"}},
             {"id": 101},
             {"id": 556, "data": {}},  # a miss with no text: an empty result
             {"id": True, "data": {"text": "also new", "reference": "another rewrite",
                                   "labelloop_key": "r9-p9"}},
             {"id": 557, "data": {"text": "   ", "reference": "unused"}}]
    results = predictions_for(ledger, tasks, live=live)
    assert len(results) == len(tasks)
    assert texts(results) == ["a rewrite", "draft one", None, "another rewrite", None]
    assert live.calls == 1
    assert results[0] == prediction("a rewrite", None, LIVE)
    assert results[2] == results[4] == {"model_version": LIVE, "result": []}
    assert ledger.teacher_usage()["calls"] == 2


def test_a_miss_without_a_reference_is_an_empty_result_and_a_recorded_failure(ledger):
    results = predictions_for(ledger, [{"id": 900, "data": {"text": "no reference here"}}], live=Live())
    assert results == [{"model_version": LIVE, "result": []}]
    [failure] = ledger.teacher_failures()
    assert failure["pool_id"] is None and failure["round_id"] is None
    assert failure["reason"] == "no reference for this item"


def test_live_answers_are_recorded_with_no_pool_id(ledger):
    # position 0 and 1 in the request: they must not be booked against pool items 1 and 2
    predictions_for(ledger, [{"id": 900, "data": {"text": "a", "reference": "ra"}},
                             {"id": 901, "data": {"text": "b", "reference": "rb"}}], live=Live())
    with sqlite3.connect(ledger.path) as conn:
        rows = conn.execute("SELECT round_id, pool_id, status FROM teacher_calls ORDER BY id").fetchall()
    assert rows == [(None, None, "ok"), (None, None, "ok")]
    again = predictions_for(ledger, [{"id": 902, "data": {"text": "a", "reference": "ra"}}], live=Live())
    assert texts(again) == ["ra"] and ledger.teacher_usage()["cached"] == 1  # the cache answers a repeat


def test_ids_that_cannot_be_ours_are_misses_not_faults(ledger):
    tasks = [{"id": 10**30, "data": {"labelloop_key": f"r{10**30}-p1"}}, {"id": -1, "data": {"labelloop_key": "x"}},
             {"id": "101", "data": {"labelloop_key": 5}}]
    assert predictions_for(ledger, tasks, live=Live()) == [{"model_version": LIVE, "result": []}] * 3


def test_no_tasks_no_teacher(ledger):
    live = Live()
    assert predictions_for(ledger, [], live=live) == [] and live.calls == 0


def test_lazy_teacher_is_made_once_on_first_call(monkeypatch, tmp_path):
    from loop import teacher as teacher_mod
    from loop.config import load_settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    made = []
    real = teacher_mod.from_settings
    monkeypatch.setattr(teacher_mod, "from_settings", lambda s, **kw: made.append(1) or real(s, **kw))
    lazy = LazyTeacher(load_settings(data_dir=str(tmp_path)))
    assert made == []
    first, template = lazy()
    assert lazy()[0] is first and made == [1]
    assert isinstance(first, ReferenceTeacher) and template.name == "style_transfer"
