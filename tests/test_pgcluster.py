"""The private PostgreSQL cluster of a local Label Studio, with the real server programs: it fails loudly
without them, keeps its data across starts, and a server a dead run left running is stopped, never
left as an orphan beside the new one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from loop import children, pgcluster
from loop.errors import LocalStudioError


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()


def query(cluster: pgcluster.Cluster, sql: str) -> str:
    answer = pgcluster._psql(pgcluster.find_binaries(), cluster, sql, database=pgcluster.DATABASE)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


def test_missing_server_programs_fail_loudly_with_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalStudioError, match=r"initdb, postgres, psql.*apt-get install postgresql-15"):
        pgcluster.find_binaries(search=tmp_path)


def test_data_survives_a_restart_and_a_server_left_running_is_stopped(pg_data_dir):
    first = pgcluster.start(pg_data_dir, "s3cret-pw")
    second = None
    try:
        assert query(first, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7); SELECT n FROM kept") == "7"
        children.record(pg_data_dir, "postgres", first.pid, marker=first.marker, stop_signal=signal.SIGINT)
        # the run that started it dies without stopping it; the next start finds it in postmaster.pid
        second = pgcluster.start(pg_data_dir, "s3cret-pw")
        assert not alive(first.pid) and alive(second.pid)
        assert query(second, "SELECT n FROM kept") == "7"
        assert query(second, "SHOW listen_addresses") == "127.0.0.1"
        children.record(pg_data_dir, "postgres", second.pid, marker=second.marker, stop_signal=signal.SIGINT)
        # and a later run's orphan sweep stops it with the recorded signal (a fast shutdown: a clean log)
        assert children.stop_orphans(pg_data_dir) == ["postgres"]
        assert not alive(second.pid)
        assert "database system is shut down" in (pg_data_dir / pgcluster.LOG_FILE).read_text().rsplit("\n", 3)[-2]
        if os.geteuid() == 0:  # PostgreSQL refuses root: the cluster belongs to an unprivileged user
            assert (pg_data_dir / pgcluster.CLUSTER_DIR).stat().st_uid != 0
    finally:
        pgcluster.stop(first)
        if second is not None:
            pgcluster.stop(second)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_folder_the_server_user_cannot_enter_is_named_not_changed(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(LocalStudioError, match=f"cannot enter {closed} "):
        pgcluster.start(closed / "label-studio", "pw", timeout=5)
    assert closed.stat().st_mode & 0o777 == 0o700
