"""A private PostgreSQL cluster for the local Label Studio (`studio.database = "postgresql"`).

Label Studio in production runs on PostgreSQL; on SQLite a bulk import that meets a write lock is
retried without its predictions. This module creates a cluster in the Label Studio data directory
(``<data_dir>/postgres``, once, with ``initdb``), starts ``postgres`` on 127.0.0.1 only (TCP, no unix
socket), creates Label Studio's database, and stops the server again (fast shutdown: SIGINT).

PostgreSQL refuses to run as root. Run as root, the server runs as the ``postgres`` system user
(Debian's package creates it), else ``nobody``; the cluster belongs to that user, and the data directory
(ours, mode 0700) is given to its group for search only (mode 0710), so that it can reach the cluster
without reading anything else there. A directory above the data directory that the user cannot enter
is reported, not changed. Run as anyone else, the server runs as that user.

The server binaries are looked up on PATH, then in Debian's /usr/lib/postgresql/<version>/bin.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loop import children
from loop.errors import LocalStudioError

log = logging.getLogger(__name__)

CLUSTER_DIR = "postgres"
LOG_FILE = "postgres.log"
ROLE = "labelstudio"  # the cluster's superuser, which Label Studio connects as
DATABASE = "labelstudio"
SERVER_PROGRAMS = ("initdb", "postgres", "psql")
DEBIAN_ROOT = Path("/usr/lib/postgresql")


@dataclass
class Cluster:
    """A running cluster: where it lives, how to reach it, and the server's pid."""

    path: Path
    port: int
    password: str = field(repr=False)
    pid: int | None
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def marker(self) -> str:
        """What the server's command line holds and no other program's does (children.record)."""
        return str(self.path)

    def django_env(self) -> dict[str, str]:
        """The variables that point Label Studio's Django at this cluster."""
        return {"DJANGO_DB": "default", "POSTGRE_NAME": DATABASE, "POSTGRE_USER": ROLE,
                "POSTGRE_PASSWORD": self.password, "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(self.port)}


@dataclass(frozen=True)
class _Account:
    """The unprivileged user the server runs as when labelloop runs as root."""

    name: str
    uid: int
    gid: int


def find_binaries(search: Path = DEBIAN_ROOT) -> Path:
    """The folder holding initdb, postgres and psql: PATH's, else the newest of search/<version>/bin.
    Raises LocalStudioError saying how to install them."""
    on_path = [shutil.which(p) for p in SERVER_PROGRAMS]
    if all(on_path) and len({Path(p).resolve().parent for p in on_path}) == 1:
        return Path(on_path[0]).resolve().parent
    versions = sorted((d for d in search.glob("*/bin") if d.parent.name.isdigit()),
                      key=lambda d: int(d.parent.name), reverse=True)
    for folder in versions:
        if all((folder / p).is_file() for p in SERVER_PROGRAMS):
            return folder
    raise LocalStudioError(
        f"studio.database = 'postgresql' needs the PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}),"
        f" found neither on PATH nor in {search}/<version>/bin; install them (Debian: apt-get install"
        " postgresql-15) or set studio.database = 'sqlite'")


def _account() -> _Account | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(name, entry.pw_uid, entry.pw_gid)
    raise LocalStudioError("PostgreSQL refuses to run as root, and neither a 'postgres' nor a 'nobody' user"
                           " exists to run it as; run labelloop as an ordinary user")


def _can_search(path: Path, account: _Account) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _make_reachable(path: Path, top: Path, account: _Account) -> None:
    """Let `account` enter every folder above `path`: folders at or below `top` (ours) are given to its
    group with search permission only; one above `top` that it cannot enter raises LocalStudioError."""
    for folder in path.parents:
        if _can_search(folder, account):
            continue
        if folder == top or top in folder.parents:
            os.chown(folder, -1, account.gid)
            os.chmod(folder, (folder.stat().st_mode & 0o7777) | stat.S_IXGRP)
            continue
        raise LocalStudioError(
            f"PostgreSQL refuses to run as root, so labelloop runs it as user {account.name!r}, who cannot"
            f" enter {folder} (mode {stat.filemode(folder.stat().st_mode)}); set data_dir to a folder that user"
            " can reach, run labelloop as an ordinary user, or set studio.database = 'sqlite'")


def _run_as(account: _Account | None) -> dict:
    """Popen keyword arguments that run a program as `account` (nothing when we are not root)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _server_env() -> dict[str, str]:
    # the server and initdb need no variable of ours; PG* variables would redirect the client programs
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": os.environ.get("TZ", "UTC")}


def _initdb(bins: Path, path: Path, password: str, account: _Account | None, top: Path) -> None:
    """Create the cluster at `path`, all or nothing: initdb writes a sibling folder renamed when done."""
    fresh = path.with_name(path.name + ".init")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    pwfile = path.with_name(path.name + ".pw")
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        if account is not None:
            _make_reachable(fresh, top, account)
            os.chown(fresh, account.uid, account.gid)
            os.chown(pwfile, account.uid, account.gid)
        proc = subprocess.run(
            [str(bins / "initdb"), "-D", str(fresh), "-U", ROLE, "--auth=scram-sha-256", f"--pwfile={pwfile}",
             "--no-locale", "-E", "UTF8", "--no-instructions"],
            capture_output=True, text=True, env=_server_env(), cwd="/", timeout=300, **_run_as(account))
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise LocalStudioError(f"initdb could not create a PostgreSQL cluster in {fresh} (exit {proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-2000:]}")
    os.replace(fresh, path)
    log.info("created a PostgreSQL cluster in %s", path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_leftover(path: Path) -> None:
    """Stop a server still running on this cluster (a run killed before it could stop it): its pid is the
    first line of postmaster.pid, and its command line names the cluster."""
    try:
        pid = int((path / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if str(path).encode() in cmdline and cmdline[0].endswith(b"postgres"):
        log.warning("stopping the PostgreSQL server (pid %d) left running on %s by an earlier run", pid, path)
        children.stop_pid(pid, first=signal.SIGINT)


def _psql(bins: Path, cluster: Cluster, sql: str, database: str = "postgres") -> subprocess.CompletedProcess:
    env = {**_server_env(), "PGPASSWORD": cluster.password, "PGCONNECT_TIMEOUT": "3"}
    return subprocess.run(
        [str(bins / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
         str(cluster.port), "-U", ROLE, "-d", database, "-c", sql],
        capture_output=True, text=True, env=env, timeout=30)


def _log_tail(path: Path, offset: int, n: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def start(data_dir: Path, password: str, *, port: int | None = None, timeout: float = 120) -> Cluster:
    """Start the cluster of this Label Studio data directory (created on first use) on 127.0.0.1:port
    (None: a free port), make sure Label Studio's database exists, and return the running cluster.
    Raises LocalStudioError with the server's log when it does not come up."""
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    bins = find_binaries()
    account = _account()
    path = data_dir / CLUSTER_DIR
    if account is not None:
        _make_reachable(path, data_dir, account)
    if not (path / "PG_VERSION").exists():
        _initdb(bins, path, password, account, data_dir)
    _stop_leftover(path)
    port = port or _free_port()  # a taken port makes the server exit at once, with the reason in its log
    log_path = data_dir / LOG_FILE
    with open(log_path, "ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(path), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
             "-c", "unix_socket_directories="],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_server_env(), cwd=path,
            start_new_session=True, **_run_as(account))
    cluster = Cluster(path, port, password, proc.pid, proc)
    try:
        _wait_ready(bins, cluster, proc, time.monotonic() + timeout, log_path, offset)
        if not _psql(bins, cluster, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").stdout.strip():
            made = _psql(bins, cluster, f"CREATE DATABASE {DATABASE}")
            if made.returncode != 0:
                raise LocalStudioError(f"could not create database {DATABASE} in {path}: {made.stderr.strip()}")
    except BaseException:
        stop(cluster)
        raise
    log.info("PostgreSQL (pid %d) ready on 127.0.0.1:%d, cluster %s", proc.pid, port, path)
    return cluster


def _wait_ready(bins: Path, cluster: Cluster, proc: subprocess.Popen, deadline: float, log_path: Path,
                offset: int) -> None:
    while True:
        if proc.poll() is not None:
            raise LocalStudioError(f"PostgreSQL exited with code {proc.returncode} before it was ready; last lines"
                                   f" of {log_path}:\n{_log_tail(log_path, offset)}")
        answer = _psql(bins, cluster, "SELECT 1")
        if answer.returncode == 0:
            return
        if re.search(r"password authentication failed", answer.stderr):
            raise LocalStudioError(f"the PostgreSQL cluster in {cluster.path} rejects the password stored in the"
                                   " Label Studio credentials file (was it replaced?)")
        if time.monotonic() >= deadline:
            raise LocalStudioError(f"PostgreSQL did not accept connections on 127.0.0.1:{cluster.port} in time;"
                                   f" last lines of {log_path}:\n{_log_tail(log_path, offset)}")
        time.sleep(0.2)  # poll interval; readiness is decided by a query answering and the deadline


def stop(cluster: Cluster, timeout: float = 30) -> None:
    """Fast shutdown (SIGINT: clients are disconnected, the data is flushed), SIGKILL after `timeout`."""
    if cluster.pid is None:
        return
    pid, proc = cluster.pid, cluster._proc
    cluster.pid, cluster._proc = None, None
    children.stop_pid(pid, timeout=timeout, first=signal.SIGINT)
    if proc is not None:
        proc.poll()  # stop_pid reaped it; let Popen know
    log.info("PostgreSQL (pid %d) stopped", pid)
