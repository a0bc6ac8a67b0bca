"""Start and stop what `labelloop run` needs: Label Studio, the ML backend, the project, the scheduler.

A local Label Studio is started (in its own venv) unless `studio.url` points at an existing one; the
ML backend runs as a child process over the same ledger (so `loop` never imports `ml_backend`),
connected to the project, which also makes Label Studio send its webhooks there. Every process
started here is stopped by `stop()`, in reverse order.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from loop import children, localstudio
from loop.config import INSTANCE_ENV, WEBHOOK_SECRET_HEADER, Settings
from loop.errors import ServiceError, StudioError
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.regions import with_subgroup
from loop.rounds import Context
from loop.scheduler import LOCK_NAME, ProjectLock

log = logging.getLogger(__name__)




@dataclass
class Services:
    """Handles to everything `start` brought up."""

    ctx: Context
    studio_url: str
    backend_url: str
    local_studio: localstudio.LocalStudio | None = None
    backend: subprocess.Popen | None = None
    stopped: list[str] = field(default_factory=list)
    lock: ProjectLock | None = None


def ensure_pool(settings: Settings, ledger: Ledger) -> dict | None:
    """Ingest the configured pool file when the ledger has no pool yet."""
    if ledger.pool_count():
        return None
    return ingest(ledger, settings.pool.path, **settings.pool.read_options())


def wait_http(url: str, *, timeout: float, proc: subprocess.Popen | None = None, what: str = "service",
              instance: str | None = None) -> None:
    """Poll `url` until it answers 200, the process dies, or the deadline passes. With `instance`, the
    answer must carry that nonce: a 200 from another process on the port is not ours being ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            reply = requests.get(url, timeout=2)
            if reply.status_code == 200 and (instance is None or reply.json().get("instance") == instance):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    raise ServiceError(f"{what} at {url} not ready after {timeout:.0f} s")


def start_backend(settings: Settings, *, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """The ML backend as a child process over the effective settings; returns (process, url)."""
    data_dir = settings.data_dir.resolve()
    effective = data_dir / "effective-settings.json"
    effective.write_text(json.dumps(settings.model_dump(mode="json"), indent=2))  # holds no secrets
    host, port = settings.backend.host, settings.backend.port
    if localstudio.port_in_use(port):
        raise ServiceError(
            f"port {port} on 127.0.0.1 is already in use; the ML backend cannot start there (another labelloop"
            " started outside this data directory, or another program): stop it or set backend.port"
        )
    log_path = data_dir / "backend.log"
    instance = secrets.token_hex(8)  # /health answers it, so that only this child counts as ready
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ml_backend", "--config", str(effective), "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, INSTANCE_ENV: instance},
        )
    children.record(data_dir, "backend", proc.pid, marker="ml_backend")
    url = f"http://{host}:{port}"
    try:
        wait_http(f"{url}/health", timeout=timeout, proc=proc, what=f"ML backend (log: {log_path})", instance=instance)
    except ServiceError:
        _terminate(proc)
        children.forget(data_dir, "backend")
        raise
    return proc, url


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def check_project_continuity(ctx: Context, wanted: int | None) -> None:
    """Refuse to go on in another project than the one earlier rounds were imported into.

    If that project answers 404 (the key now belongs to another organisation, the server's data was
    reset, a proxy) or the settings name another one, a new project would start empty: every
    verification would look deleted and the open round could never be verified. Raises ServiceError
    saying what to do instead."""
    imported = [r for r in ctx.ledger.rounds() if r["project_id"] is not None]
    if not imported:
        return
    home = imported[-1]["project_id"]  # where the newest round went
    if wanted is not None and wanted != home:
        raise ServiceError(
            f"the ledger's rounds were imported into Label Studio project {home}, but the settings name project"
            f" {wanted}; set studio.project_id = {home} (or use a new data_dir for a new project)"
        )
    try:
        ctx.studio.counts(home)
    except StudioError as exc:
        if exc.status != 404:
            raise
        raise ServiceError(
            f"Label Studio at {ctx.studio.url} has no project {home}, which holds the ledger's rounds"
            f" {', '.join(str(r['id']) for r in imported if r['project_id'] == home)}; labelloop will not"
            " create an empty replacement (its verifications would all look deleted). Check studio.url and that"
            " LABEL_STUDIO_API_KEY belongs to the organisation that owns the project, or restore the server's data"
        ) from None


def connect_project(ctx: Context, backend_url: str) -> int:
    """Create or reuse the Label Studio project, remember it in the ledger, connect the backend."""
    s = ctx.settings
    stored = ctx.ledger.find_meta("project_id")
    wanted = s.studio.project_id or (int(stored) if stored else None)
    check_project_continuity(ctx, wanted)
    label_config = s.label_config_path.read_text(encoding="utf-8")
    if s.studio.show_subgroup:
        label_config = with_subgroup(label_config)
    project_id = ctx.studio.ensure_project(s.studio.project_title, label_config, wanted)
    ctx.ledger.set_meta("project_id", str(project_id))
    url = (s.backend.public_url or backend_url).rstrip("/")
    auth = s.backend_auth
    basic = (auth[0], auth[1].get_secret_value()) if auth else None
    ctx.studio.connect_backend(project_id, url, basic_auth=basic)
    if basic or s.webhook_secret:
        # the webhook Label Studio adds for the backend carries no credentials: give it ours
        headers = {}
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        if s.webhook_secret:
            headers[WEBHOOK_SECRET_HEADER] = s.webhook_secret.get_secret_value()
        ctx.studio.ensure_webhook(project_id, f"{url}/webhook", headers=headers)
    ctx.project_id = project_id
    return project_id


def start(settings: Settings, *, progress: bool = True, with_backend: bool = True) -> Services:
    """Bring everything up; on failure, stop what already started and raise.

    `with_backend=False` expects the ML backend to be served already (gunicorn in the container)
    at `backend.public_url`, or at `backend.host:port`.
    """
    from loop.studio import Studio

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = ProjectLock(settings.data_dir / LOCK_NAME)
    lock.acquire()  # first: a second `run` must be refused before it changes anything
    local = None
    backend = None
    try:
        children.stop_orphans(settings.data_dir)
        ledger = Ledger(settings.ledger_path)
        ensure_pool(settings, ledger)
        if settings.studio.url:
            key = settings.label_studio_api_key
            if key is None:
                raise ServiceError(
                    f"studio.url is {settings.studio.url} but LABEL_STUDIO_API_KEY is not set in the environment"
                )
            studio_url, api_key = settings.studio.url, key.get_secret_value()
        else:
            local = localstudio.start(settings.data_dir / "label-studio", port=settings.studio.port,
                                      database=settings.studio.database, postgres_port=settings.studio.postgres_port)
            if local.pid is not None:
                children.record(settings.data_dir, "label-studio", local.pid, marker="label-studio")
            if local.postgres is not None:
                children.record(settings.data_dir, "postgres", local.postgres.pid, marker=local.postgres.marker,
                                stop_signal=signal.SIGINT)
            studio_url, api_key = local.url, local.token
        if with_backend:
            backend, backend_url = start_backend(settings)
        else:
            backend_url = settings.backend.public_url or f"http://{settings.backend.host}:{settings.backend.port}"
            wait_http(f"{backend_url.rstrip('/')}/health", timeout=60, what="ML backend")
        ctx = Context(settings, ledger, Studio(studio_url, api_key), progress=progress)
        connect_project(ctx, backend_url)
    except BaseException:
        stop(Services(None, "", "", local, backend, lock=lock))  # type: ignore[arg-type]
        raise
    return Services(ctx, studio_url, backend_url, local, backend, lock=lock)


def stop(services: Services) -> None:
    """Stop the backend, then Label Studio (only what `start` started), then give up the project lock."""
    data_dir = services.ctx.settings.data_dir if services.ctx is not None else None
    if services.backend is not None:
        _terminate(services.backend)
        services.stopped.append("backend")
    if services.local_studio is not None:
        localstudio.stop(services.local_studio)
        services.stopped.append("label-studio")
    if data_dir is not None:
        for name in ("backend", "label-studio", "postgres"):
            children.forget(data_dir, name)
    if services.lock is not None:
        services.lock.release()
