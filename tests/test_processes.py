"""The processes `labelloop run` starts, with real processes and the real Label Studio: a run that died
leaves no orphan that the next run adopts, a second run changes nothing before it is refused, and a
port held by someone else is never taken for our backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from loop import service
from loop.config import WEBHOOK_SECRET_HEADER, load_settings
from loop.errors import ServiceError

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def overrides(tmp_path, small_pool, label_studio, starter_model, monkeypatch) -> dict:
    """Settings for a run against the session's Label Studio, with a backend port of its own."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return {"data_dir": str(tmp_path / "labelloop"), "pool__path": str(small_pool),
            "learner__base_model": str(starter_model), "studio__url": label_studio.url,
            "studio__project_title": f"processes {uuid.uuid4().hex[:8]}", "backend__port": free_port()}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()


def test_a_dead_runs_backend_is_stopped_not_adopted_and_new_secrets_serve(overrides, monkeypatch):
    """A run killed without stopping its children: the next run stops the orphan backend and serves its
    own, so changed credentials take effect (the orphan's /health would have passed for ours)."""
    monkeypatch.setenv("LABELLOOP_WEBHOOK_SECRET", "old-secret")
    first = service.start(load_settings(**overrides), progress=False)
    orphan = first.backend.pid
    first.lock.release()  # what the kernel does to a flock when its process dies; the children live on
    monkeypatch.setenv("LABELLOOP_WEBHOOK_SECRET", "new-secret")
    second = service.start(load_settings(**overrides), progress=False)
    try:
        first.backend.wait(timeout=30)  # reaped here: it was started by this test process
        assert not alive(orphan) and second.backend.pid != orphan
        url = second.backend_url
        hook = {"action": "ANNOTATION_CREATED", "task": {"id": 1}}
        assert requests.post(f"{url}/webhook", json=hook, headers={WEBHOOK_SECRET_HEADER: "new-secret"},
                             timeout=10).status_code == 201
        assert requests.post(f"{url}/webhook", json=hook, headers={WEBHOOK_SECRET_HEADER: "old-secret"},
                             timeout=10).status_code == 403
        record = json.loads((Path(overrides["data_dir"]) / "children.json").read_text())
        assert record["backend"]["pid"] == second.backend.pid
    finally:
        service.stop(second)
    assert not alive(second.backend.pid)
    assert "backend" not in json.loads((Path(overrides["data_dir"]) / "children.json").read_text())


def test_a_second_run_is_refused_before_it_starts_or_changes_anything(overrides):
    first = service.start(load_settings(**overrides), progress=False)
    try:
        data_dir = Path(overrides["data_dir"])
        record = (data_dir / "children.json").read_text()
        log_size = (data_dir / "backend.log").stat().st_size
        script = ("import sys, json\nfrom loop import service\nfrom loop.config import load_settings\n"
                  "service.start(load_settings(**json.loads(sys.argv[1])), progress=False)\n")
        other = {**overrides, "backend__port": free_port()}
        run = subprocess.run([sys.executable, "-c", script, json.dumps(other)], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env=os.environ.copy())
        assert run.returncode != 0 and "AlreadyRunning" in run.stderr and "already runs this project" in run.stderr
        assert (data_dir / "children.json").read_text() == record  # no child was started or forgotten
        assert (data_dir / "backend.log").stat().st_size == log_size
        with pytest.raises(requests.ConnectionError):  # no backend was started on the second run's port
            requests.get(f"http://127.0.0.1:{other['backend__port']}/health", timeout=2)
    finally:
        service.stop(first)


def test_a_backend_port_held_by_another_program_is_refused_and_the_lock_released(overrides):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", overrides["backend__port"]))
        squatter.listen()
        with pytest.raises(ServiceError, match=f"port {overrides['backend__port']} on 127.0.0.1 is already in use"):
            service.start(load_settings(**overrides), progress=False)
    again = service.start(load_settings(**overrides), progress=False)  # the failed start let go of the lock
    try:
        assert requests.get(f"{again.backend_url}/health", timeout=10).json()["instance"]
    finally:
        service.stop(again)
