"""The scheduler: an APScheduler job that polls Label Studio and advances the round, one run at a time.

Webhooks from Label Studio can be lost (delivered once, never retried), so the job also polls on a
fixed interval; a webhook only makes the next poll come sooner. A file lock in the data directory
keeps a second scheduler off the same project.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from loop import rounds
from loop.errors import (
    AlreadyRunning,  # noqa: F401 (re-exported: callers catch it from here too)
    is_permanent,
)

log = logging.getLogger(__name__)

LOCK_NAME = "scheduler.lock"  # in the data directory: one `labelloop run` per project




_HELD: dict[Path, list[int]] = {}  # lock path -> [fd, holders] of the locks this process holds


class ProjectLock:
    """An exclusive, non-blocking file lock; released when the process exits, even on kill -9.

    Re-entrant within one process: `labelloop run` takes it before starting anything, and the
    scheduler it then starts takes it again."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise AlreadyRunning naming the process that holds it."""
        if self._fd is not None:
            return
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            self._fd = _HELD[key][0]
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise AlreadyRunning(f"{self.path}: a scheduler ({holder}) already runs this project") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        _HELD[key] = [fd, 1]

    def release(self) -> None:
        """Give the lock up (the file stays; the last holder in this process unlocks it)."""
        if self._fd is None:
            return
        self._fd = None
        key = self.path.resolve()
        fd, holders = _HELD[key]
        if holders > 1:
            _HELD[key][1] -= 1
            return
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def tick(ctx: rounds.Context, on_step: Callable[[rounds.Step], None] | None = None) -> list[rounds.Step]:
    """One scheduler run: advance until waiting; an error is logged and recorded on the round, then
    retried at the next tick."""
    try:
        steps = rounds.run_until_waiting(ctx)
    except Exception as exc:  # the next tick retries from the persisted state, unless retrying cannot help
        current = ctx.ledger.find_current_round()
        message = f"{type(exc).__name__}: {exc}"
        if current is not None:
            ctx.ledger.set_round_error(current["id"], message)
        log.debug("round step failed", exc_info=True)
        kind = "stopped" if is_permanent(exc) else "error"
        return [rounds.Step(kind, f"{kind}: {message}", current["id"] if current else None,
                            current["state"] if current else None)]
    current = ctx.ledger.find_current_round()
    if current is not None and current["error"]:
        ctx.ledger.set_round_error(current["id"], None)
    for step in steps:
        if on_step:
            on_step(step)
    return steps


class Scheduler:
    """Runs `tick` every `poll_seconds` in a background thread, never two at once."""

    def __init__(self, ctx: rounds.Context, on_step: Callable[[rounds.Step], None] | None = None):
        self.ctx = ctx
        self.on_step = on_step
        self.lock = ProjectLock(ctx.settings.data_dir / LOCK_NAME)
        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._mutex = threading.Lock()
        self._last_wait: str | None = None
        self.failures = 0
        self._resume_at = 0.0
        self.stopped_with: str | None = None  # the permanent error that ended this run
        self.done = threading.Event()  # set when the run cannot go on (see stopped_with)

    def _run(self) -> None:
        if time.monotonic() < self._resume_at:  # backing off after failures
            return
        with self._mutex:
            steps = tick(self.ctx, self.on_step)
        last = steps[-1] if steps else None
        if last is not None and last.kind == "stopped":
            self.stopped_with = last.message.removeprefix("stopped: ")
            log.error("%s; retrying cannot fix this: the run stops", last)
            self._scheduler.pause()
            self.done.set()
            return
        if last is not None and last.kind == "error":
            self.failures += 1
            s = self.ctx.settings.scheduler
            delay = min(s.poll_seconds * 2 ** (self.failures - 1), s.max_backoff_seconds)
            self._resume_at = time.monotonic() + delay
            log.warning("%s; retrying in %.1f s (%d failure(s) in a row)", last, delay, self.failures)
            return
        if self.failures:
            log.info("recovered after %d failed attempt(s)", self.failures)
        self.failures = 0
        message = last.message if last is not None else None
        if last is not None and last.kind in ("waiting", "idle") and message != self._last_wait:
            log.info("%s", last)
        self._last_wait = message

    def start(self) -> None:
        self.lock.acquire()
        from loop.versions import sweep_temporaries  # no training runs before this scheduler's first tick

        for path in sweep_temporaries(self.ctx.settings.models_dir):
            log.info("removed %s, left by an interrupted training or conversion", path)
        self._scheduler.add_job(
            self._run, "interval", seconds=self.ctx.settings.scheduler.poll_seconds, id="advance",
            next_run_time=_now(),
        )
        self._scheduler.start()

    def poke(self) -> None:
        """Run the job now (e.g. after a webhook) instead of at the next interval."""
        self._scheduler.modify_job("advance", next_run_time=_now())

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.lock.release()


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
