"""The project manager's facts (loop/status.py) and `labelloop status`, pinned against a two-round ledger."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from loop import status
from loop.cli import main
from tests.support import status_ledger

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def ledger(tmp_path):
    return status_ledger.build(tmp_path / "ledger.sqlite")


@pytest.fixture
def facts(ledger):
    return status.facts(ledger, now=NOW)


def pick(rows, **where):
    """The one row matching every key=value."""
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, rows)
    return found[0]


def test_rounds_count_items_and_the_latest_verdict_of_each(facts):
    counts = ("state", "selected", "failed", "imported", "verified", "remaining", "accept", "edit", "reject")
    assert [{k: r[k] for k in counts} for r in facts["rounds"]] == [
        # item 9 was accepted, then edited by a second annotator: it counts once, as an edit
        {"state": "done", "selected": 6, "failed": 0, "imported": 6, "verified": 6, "remaining": 0,
         "accept": 2, "edit": 2, "reject": 2},
        {"state": "verifying", "selected": 6, "failed": 1, "imported": 5, "verified": 4, "remaining": 1,
         "accept": 1, "edit": 1, "reject": 2},
    ]
    assert facts["current"]["round"] == 2 and facts["current"]["reject_rate"] == 0.5
    assert facts["rounds"][0]["teacher"] == status_ledger.TEACHER
    assert facts["pool"] == {"items": 14, "never_sent": 2}


@pytest.mark.parametrize(("round_", "cluster", "expected"), [
    (1, 0, {"selected": 3, "imported": 3, "verified": 3, "remaining": 0, "accept": 2, "edit": 1, "reject": 0}),
    (1, 1, {"selected": 3, "imported": 3, "verified": 3, "remaining": 0, "accept": 0, "edit": 1, "reject": 2}),
    (2, 0, {"selected": 3, "imported": 3, "verified": 2, "remaining": 1, "accept": 1, "edit": 1, "reject": 0}),
    (2, 1, {"selected": 3, "imported": 2, "verified": 2, "remaining": 0, "accept": 0, "edit": 0, "reject": 2}),
])
def test_per_cluster_progress_and_verdicts(facts, round_, cluster, expected):
    row = pick(facts["clusters"], round=round_, cluster=cluster)
    assert {k: row[k] for k in expected} == expected
    assert row["reject_rate"] == round(expected["reject"] / expected["verified"], 4)


def test_teacher_misfit_is_flagged_per_cluster_above_the_threshold(ledger, facts):
    assert facts["teacher_fit"] == [
        {"cluster": 0, "verified": 5, "reject": 0, "reject_rate": 0.0, "flagged": False},
        {"cluster": 1, "verified": 5, "reject": 4, "reject_rate": 0.8, "flagged": True},
    ]
    relaxed = status.facts(ledger, now=NOW, reject_threshold=0.85)
    assert not any(t["flagged"] for t in relaxed["teacher_fit"])
    too_few = status.facts(ledger, now=NOW, min_verified=6)  # five verified items are not enough evidence
    assert not any(t["flagged"] for t in too_few["teacher_fit"])


def test_coverage_per_cluster_and_subgroup(facts):
    assert facts["coverage"] == {
        "clusters": [{"cluster": 0, "pool": 7, "selected": 6, "labeled": 5, "coverage": 0.7143},
                     {"cluster": 1, "pool": 7, "selected": 6, "labeled": 1, "coverage": 0.1429}],
        "subgroups": [{"subgroup": "a", "pool": 7, "selected": 6, "labeled": 4, "coverage": 0.5714},
                      {"subgroup": "b", "pool": 7, "selected": 6, "labeled": 2, "coverage": 0.2857}],
    }


def test_annotators_are_anonymised_with_throughput_and_median_lead_time(ledger, facts):
    salt = ledger.annotator_salt()
    assert salt == ledger.annotator_salt() and len(salt) == 32  # created once, then kept
    alice, bob = (status.anonymise(f"{n}@example.org", salt) for n in ("alice", "bob"))
    # alice: 6 annotations from 03-01 09:00:00 to 03-02 10:40:20 (25.672 h); lead times 10 10 12 15 20 20
    assert facts["annotation"]["annotators"] == [
        {"annotator": alice, "annotations": 6, "median_lead_time_s": 13.5, "per_hour": 0.23, "skips": 0},
        {"annotator": bob, "annotations": 5, "median_lead_time_s": 40.0, "per_hour": 0.19, "skips": 0},
    ]
    assert facts["annotation"]["overall"]["median_lead_time_s"] == 20.0
    assert "example.org" not in repr(facts)


def test_completion_estimate_follows_the_rounds_pace(facts):
    # round 2: 4 annotations between 10:00 and 11:00, one item left -> a quarter of an hour from now
    assert facts["estimate"] == {"remaining": 1, "per_hour": 4.0, "hours_left": 0.25,
                                 "eta": "2026-03-02T12:15:00+00:00"}


def test_teacher_cost_and_learner_metrics(facts):
    total = facts["teacher"]["total"]
    assert (total["calls"], total["attempts"], total["failures"]) == (12, 13, 1)
    assert (total["prompt_tokens"], total["completion_tokens"]) == (1300, 220)
    assert total["cost"] == pytest.approx(0.012)
    assert facts["teacher"]["rounds"][2]["failures"] == 1
    assert [(v["version"], v["current"], v["metrics"]) for v in facts["learners"]] == [
        ("v0", False, {}), ("v1", True, {"task_score": 0.61, "train_loss": 0.52})]


def test_an_empty_ledger_has_no_current_round(tmp_path):
    from loop.ledger import Ledger

    facts = status.facts(Ledger(tmp_path / "empty.sqlite"), now=NOW)
    assert facts["current"] is None and facts["estimate"] is None and facts["rounds"] == []


def test_status_command_prints_the_facts(ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["status"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "current round 2: verifying, verified 4/5, 0 skipped, 1 remaining" in out
    assert "teacher does not suit this cluster" in out
    assert "0.0120" in out and "task_score" in out and "0.610" in out
    assert status.anonymise("alice@example.org", ledger.annotator_salt()) in out
    assert "alice" not in out
