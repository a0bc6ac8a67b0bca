"""Secrets never land anywhere we write: a whole round with every secret in use, then a grep of it all."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import requests

from loop import export, service
from loop.config import load_settings
from loop.scheduler import tick
from tests.support.openai_server import FakeOpenAI
from tests.test_e2e import free_port
from tests.test_reliability import wait_for

OPENAI_KEY = "sk-live-" + uuid.uuid4().hex
BASIC_PASS = "basic-" + uuid.uuid4().hex
WEBHOOK_SECRET = "hook-" + uuid.uuid4().hex


def test_no_secret_reaches_logs_ledger_exports_or_files(tmp_path, small_pool, label_studio, starter_model,
                                                        monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = {"OPENAI_API_KEY": OPENAI_KEY, "BASIC_AUTH_PASS": BASIC_PASS,
               "LABELLOOP_WEBHOOK_SECRET": WEBHOOK_SECRET, "LABEL_STUDIO_API_KEY": label_studio.token}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BASIC_AUTH_USER", "labelstudio")
    data_dir = tmp_path / "labelloop"
    with FakeOpenAI() as llm:
        settings = load_settings(
            data_dir=str(data_dir), pool__path=str(small_pool), learner__base_model=str(starter_model),
            learner__epochs=1, cluster__k=2, select__budget=4, studio__url=label_studio.url,
            studio__project_title=f"secrets {uuid.uuid4().hex[:8]}", backend__port=free_port(),
            teacher__base_url=llm.base_url, teacher__model="gpt-test",
            team__lookahead=0,  # one batch at a time: test_team.py covers the look-ahead
        )
        running = service.start(settings, progress=False)
        try:
            ctx = running.ctx
            assert tick(ctx)[-1].message == "waiting: round 1 verified 0/4"
            assert all(h == f"Bearer {OPENAI_KEY}" for h in llm.auth_headers) and llm.auth_headers
            for item in ctx.ledger.batch(1):
                ctx.studio.annotate(item["task_id"], verdict="accept", text=item["draft"])
            # Label Studio's webhooks reach the backend through basic auth and the shared secret
            wait_for(lambda: ctx.ledger.pending_events() >= 4, 30, "authenticated webhooks")
            assert "round 1: done, learner v1" in [s.message for s in tick(ctx)]
            # a live teacher call from the backend process, with the key in its environment
            miss = requests.post(f"{running.backend_url}/predict", auth=("labelstudio", BASIC_PASS), timeout=30,
                                 json={"tasks": [{"id": 10**9, "data": {"text": "never seen, you idiot"}}]})
            assert miss.json()["results"][0]["result"][0]["value"]["text"][0].startswith("Politely put")
            unauthorised = requests.post(f"{running.backend_url}/predict", json={"tasks": []}, timeout=10)
            assert unauthorised.status_code == 401
            export.write(export.from_ledger(ctx.ledger), data_dir / "export.jsonl", "jsonl")
        finally:
            service.stop(running)

    written = [p for p in Path(data_dir).rglob("*") if p.is_file()]
    assert any(p.name == "backend.log" for p in written) and any(p.name == "export.jsonl" for p in written)
    for path in written:
        blob = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in blob, f"{name} found in {path}"
    for name, value in secrets.items():
        assert value not in caplog.text, f"{name} found in the log"
