"""End to end: two whole rounds through a real Label Studio (on SQLite, and on PostgreSQL), the real backend process
and the scheduler job."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
import requests

from loop import service
from loop.config import load_settings
from loop.scheduler import tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def running(request, tmp_path, small_pool, starter_model, monkeypatch):
    """The loop's services for a run on each Label Studio database: on SQLite against the session's Label
    Studio (external: never stopped by us); on PostgreSQL a local Label Studio that `service.start` brings
    up with its private cluster, and `service.stop` takes down (one extra Label Studio start)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    common = dict(pool__path=str(small_pool), learner__base_model=str(starter_model), learner__epochs=1,
                  cluster__k=3, select__budget=6, studio__project_title=f"e2e {uuid.uuid4().hex[:8]}",
                  backend__port=free_port(),
                  team__lookahead=0)  # one batch at a time: test_team.py covers the look-ahead
    if request.param == "sqlite":
        label_studio = request.getfixturevalue("label_studio")
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
        settings = load_settings(data_dir=str(tmp_path / "labelloop"), studio__url=label_studio.url, **common)
    else:
        monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
        settings = load_settings(data_dir=str(request.getfixturevalue("pg_data_dir") / "labelloop"),
                                 studio__database="postgresql", studio__port=free_port(), **common)
    services = service.start(settings, progress=False)
    try:
        yield services
    finally:
        service.stop(services)
    if request.param == "sqlite":
        assert services.stopped == ["backend"]  # an external Label Studio is never stopped by us
    else:
        local = services.local_studio
        assert services.stopped == ["backend", "label-studio"] and local.postgres.pid is None
        assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_on(p, str(local.data_dir))]  # no orphan
        assert json.loads((settings.data_dir / "children.json").read_text()) == {}


def _runs_on(proc: Path, data_dir: str) -> bool:
    try:
        return data_dir.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_two_rounds_through_label_studio(running):
    ctx = running.ctx
    ledger, studio, project = ctx.ledger, ctx.studio, ctx.project_id
    if running.local_studio is not None:  # the PostgreSQL run: Label Studio's data is in its cluster
        data = running.local_studio.data_dir
        assert running.local_studio.postgres is not None and not (data / "label_studio.sqlite3").exists()
        record = json.loads((ctx.settings.data_dir / "children.json").read_text())
        assert record["postgres"]["pid"] == running.local_studio.postgres.pid

    steps = [s.message for s in tick(ctx)]
    assert [s.split(":")[1].split()[0] for s in steps[:3]] == ["selected", "distilled", "imported"]
    assert steps[-1] == "waiting: round 1 verified 0/6"
    first = ledger.batch(1)
    assert len(first) == 6 and all(b["task_id"] and b["draft"] for b in first)
    assert len({b["cluster"] for b in first}) == 3  # N/K from every cluster
    counts = studio.counts(project)
    assert counts["task_number"] == 6 and counts["total_predictions_number"] == 6

    # the backend serves the same drafts Label Studio shows as pre-annotations
    reply = requests.post(f"{running.backend_url}/predict",
                          json={"tasks": [{"id": b["task_id"], "data": {}} for b in first]}, timeout=10).json()
    assert [r["result"][0]["value"]["text"][0] for r in reply["results"]] == [b["draft"] for b in first]

    # annotators: accept four, edit one, reject one
    verdicts = ["accept"] * 4 + ["edit", "reject"]
    for item, verdict in zip(first, verdicts, strict=True):
        text = f"{item['draft']} (edited)" if verdict == "edit" else item["draft"]
        studio.annotate(item["task_id"], verdict=verdict, text=text)

    steps = [s.message for s in tick(ctx)]
    assert "round 1: all 6 verified" in steps and "round 1: done, learner v1" in steps
    assert steps[-1] == "waiting: round 2 verified 0/6"
    verified = ledger.verifications(1)
    assert sorted(v["verdict"] for v in verified) == sorted(verdicts)
    edited = next(v for v in verified if v["verdict"] == "edit")
    assert edited["target"] == f"{edited['draft']} (edited)"
    assert next(v for v in verified if v["verdict"] == "reject")["target"] is None
    assert len(ledger.verified_pairs()) == 5
    assert ledger.find_current_model()["version"] == "v1" and ledger.find_current_model()["pairs"] == 5

    tick(ctx)  # a second sync of the same annotations changes nothing
    assert len(ledger.verifications()) == 6

    second = ledger.batch(2)
    assert len(second) == 6 and all(b["task_id"] for b in second)
    assert not {b["pool_id"] for b in first} & {b["pool_id"] for b in second}
    assert ledger.get_round(2)["learner_version"] == "v1"
    assert studio.counts(project)["task_number"] == 12

    for item in second:
        studio.annotate(item["task_id"], verdict="accept", text=item["draft"])
    steps = [s.message for s in tick(ctx)]
    assert "round 2: done, learner v2" in steps
    assert len(ledger.verified_pairs()) == 11
    assert [v["version"] for v in ledger.model_versions()] == ["v0", "v1", "v2"]
