"""The processes `labelloop run` starts (Label Studio, the ML backend), recorded so that a later run can
stop them if this one dies without stopping them (kill -9, a second Ctrl-C while training).

Orphans are dangerous, not just wasteful: a later run would find the old backend on its port,
take its health answer for its own, and keep the old code, settings and secrets serving. The record
lives in the data directory; it is read and changed only under the project lock, so any recorded
process that is still alive when a run starts belongs to a run that is gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = "children.json"


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / RECORD


def _read(data_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads(_path(data_dir).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data_dir: Path, data: dict[str, dict]) -> None:
    path = _path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def record(data_dir: Path, name: str, pid: int, marker: str, stop_signal: int = signal.SIGTERM) -> None:
    """Remember a started child: its pid, a word its command line contains (to tell a reused pid) and the
    signal that stops it cleanly (PostgreSQL: SIGINT, as SIGTERM waits for its clients to leave)."""
    data = _read(data_dir)
    data[name] = {"pid": pid, "marker": marker, "signal": int(stop_signal)}
    _write(data_dir, data)


def forget(data_dir: Path, name: str) -> None:
    """Drop a child from the record once it was stopped."""
    data = _read(data_dir)
    if data.pop(name, None) is not None:
        _write(data_dir, data)


def _alive_as(pid: int, marker: str) -> bool:
    """Whether `pid` runs and is still the program we started (not a pid reused by another one)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def stop_pid(pid: int, timeout: float = 15.0, first: int = signal.SIGTERM) -> None:
    """Signal a child's process group with `first` (each child leads its own session), then SIGKILL after
    `timeout`."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
            except ChildProcessError:
                waited = 0
            if waited == pid or not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)


def stop_orphans(data_dir: Path) -> list[str]:
    """Stop every recorded child that is still running (call under the project lock); returns their names."""
    stopped = []
    for name, info in _read(data_dir).items():
        pid, marker = int(info.get("pid", 0)), str(info.get("marker", ""))
        if pid > 0 and marker and _alive_as(pid, marker):
            log.warning("stopping %s (pid %d), left running by an earlier run that did not stop it", name, pid)
            stop_pid(pid, first=int(info.get("signal", signal.SIGTERM)))
            stopped.append(name)
        forget(data_dir, name)
    return stopped
