"""Start and stop a local, headless Label Studio server (label-studio 1.23.x) for `make run`,
`make demo` and the tests.

The server runs from its own virtual environment (it pins Django, pandas, numpy, ... exactly), bound to
127.0.0.1 only, with its database and media under one data directory: a SQLite file, or a private
PostgreSQL cluster (loop/pgcluster.py) started before it and stopped after it. Credentials (password,
legacy API token, Django SECRET_KEY) are generated on the first start, stored in
``data_dir/credentials.json`` (mode 0600) and reused afterwards: Label Studio applies the user, password
and token only when the user is first created.

This module does not import label_studio_sdk (only loop/studio.py does).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loop import pgcluster
from loop.errors import LocalStudioError  # noqa: F401 (re-exported: callers catch it from here too)
from loop.vocab import STUDIO_DATABASES

log = logging.getLogger(__name__)

USERNAME = "admin@labelloop.local"
DEFAULT_VERSION = "1.23.2"
CREDENTIALS_FILE = "credentials.json"
LOG_FILE = "label-studio.log"

# Only these variables of the caller's environment reach the server. Label Studio falls back to bare
# names (HOST, PORT, USERNAME, PASSWORD, DEBUG, SECRET_KEY, CI, LOG_LEVEL, ...) for every setting, and
# proxies would break its calls to a backend / webhook on 127.0.0.1; a whitelist keeps all that out.
_ENV_PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)

# Loopback HTTP without any proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))




@dataclass
class LocalStudio:
    url: str
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)
    data_dir: Path
    pid: int | None
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    postgres: pgcluster.Cluster | None = None  # its database server, when it runs on PostgreSQL

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE


# ---------------------------------------------------------------------------------------------------
# installation


def _venv_bin(venv_dir: Path, name: str) -> Path:
    sub = "Scripts" if os.name == "nt" else "bin"
    suffix = ".exe" if os.name == "nt" else ""
    return venv_dir / sub / f"{name}{suffix}"


def _installed_version(venv_dir: Path) -> str | None:
    for dist in venv_dir.glob("lib*/python*/site-packages/label_studio-*.dist-info"):
        return dist.name[len("label_studio-") : -len(".dist-info")]
    for dist in venv_dir.glob("Lib/site-packages/label_studio-*.dist-info"):  # Windows layout
        return dist.name[len("label_studio-") : -len(".dist-info")]
    return None


def _resolve_venv(venv_dir: Path) -> Path:
    """A relative venv_dir that does not exist under the working directory but does at the root of
    this checkout is taken from there (`labelloop run` started from another directory must not
    install a second 1 GB Label Studio)."""
    if venv_dir.is_absolute() or venv_dir.exists():
        return venv_dir
    beside = Path(__file__).resolve().parent.parent / venv_dir
    return beside if beside.exists() else venv_dir


def ensure_installed(venv_dir: Path, version: str = DEFAULT_VERSION) -> Path:
    """Create the venv and pip install label-studio==version into it if missing; return the
    label-studio executable."""
    venv_dir = Path(venv_dir).absolute()
    exe = _venv_bin(venv_dir, "label-studio")
    if exe.exists():
        installed = _installed_version(venv_dir)
        if installed in (None, version):
            return exe
        log.warning("Label Studio %s found in %s, installing %s", installed, venv_dir, version)
    python = _venv_bin(venv_dir, "python")
    if not python.exists():
        log.info("creating virtual environment %s for Label Studio", venv_dir)
        _check_call([sys.executable, "-m", "venv", str(venv_dir)], "create the Label Studio venv")
    log.info("installing label-studio==%s into %s (about 1 GB, a minute or two)", version, venv_dir)
    _check_call(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            f"label-studio=={version}",
        ],
        f"pip install label-studio=={version}",
    )
    if not exe.exists():
        raise LocalStudioError(f"label-studio=={version} installed into {venv_dir} but {exe} is missing")
    return exe


def _check_call(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise LocalStudioError(f"could not {what} (exit {proc.returncode}):\n{tail}")


# ---------------------------------------------------------------------------------------------------
# credentials


def _load_or_create_credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        try:
            creds = json.loads(path.read_text())
            if all(isinstance(creds.get(k), str) and creds[k] for k in ("username", "password", "token")):
                creds.setdefault("secret_key", _new_secret_key())
                creds.setdefault("postgres_password", secrets.token_urlsafe(24))
                _write_private_json(path, creds)
                return creds
        except (OSError, ValueError) as exc:
            raise LocalStudioError(f"unreadable credentials file {path}: {exc}") from None
        raise LocalStudioError(f"credentials file {path} lacks username / password / token")
    creds = {
        "username": USERNAME,
        "password": secrets.token_urlsafe(18),
        "token": secrets.token_hex(20),  # 40 chars, the longest Label Studio accepts
        "secret_key": _new_secret_key(),
        "postgres_password": secrets.token_urlsafe(24),  # the private cluster's, when database = postgresql
    }
    _write_private_json(path, creds)
    log.info("generated Label Studio credentials in %s", path)
    return creds


def _new_secret_key() -> str:
    # URL-safe alphabet: never starts with "$" (django-environ would treat that as a reference and
    # Label Studio would regenerate the key on every restart, invalidating personal access tokens).
    return secrets.token_urlsafe(48)


def _write_private_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _server_env(data_dir: Path, creds: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_PASSTHROUGH or k.startswith("LC_")}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": creds["username"],
            "LABEL_STUDIO_PASSWORD": creds["password"],
            "LABEL_STUDIO_USER_TOKEN": creds["token"],
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "SECRET_KEY": creds["secret_key"],
            # everything talks over loopback: the ML backend and the webhooks live on 127.0.0.1
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            # 1.23 reports server errors (with request data) and browser errors to its own Sentry
            # project unless the DSNs are set; empty disables both
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# ---------------------------------------------------------------------------------------------------
# HTTP probes (urllib, no proxies)


def _get(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _healthy(url: str) -> bool:
    try:
        status, body = _get(f"{url}/health", timeout=2.0)
        return status == 200 and json.loads(body or b"{}").get("status") == "UP"
    except (OSError, ValueError):
        return False


def _token_works(url: str, token: str) -> bool:
    try:
        status, _ = _get(f"{url}/api/current-user/whoami", token=token, timeout=5.0)
    except OSError:
        return False
    return status == 200


def port_in_use(port: int) -> bool:
    """Whether something listens on, or holds, this loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server will (Django's runserver): connections of a stopped server in TIME_WAIT must
        # not make a restart on the same port fail
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _log_tail(path: Path, n: int = 40, offset: int = 0) -> str:
    """The last n lines of the log written since offset (the log is appended to by every start)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-n:])


# ---------------------------------------------------------------------------------------------------
# start / stop

_REPAIR_SCRIPT = r"""
import json, os, sys
creds = json.loads(sys.stdin.read())
import label_studio.server as server
server._setup_env()
from users.models import User
from rest_framework.authtoken.models import Token
from organizations.models import Organization
user = User.objects.filter(email=creds["username"]).first()
if user is None:
    user = User.objects.create_user(email=creds["username"], password=creds["password"])
user.is_staff = True
user.is_superuser = True
user.set_password(creds["password"])
user.save()
Token.objects.filter(user=user).delete()
Token.objects.filter(key=creds["token"]).delete()
Token.objects.create(user=user, key=creds["token"])
org = Organization.objects.first()
if org is None:
    org = Organization.create_organization(
        created_by=user, title="Label Studio", legacy_api_tokens_enabled=True
    )
elif not org.has_user(user):
    org.add_user(user)
if hasattr(org, "jwt"):
    org.jwt.legacy_api_tokens_enabled = True
    org.jwt.save()
user.active_organization = org
user.save(update_fields=["active_organization"])
print("repaired")
"""


def _repair_credentials(exe: Path, env: dict[str, str], creds: dict[str, str], data_dir: Path) -> None:
    """Make the stored credentials valid in an existing database (a data dir whose user was created
    with other credentials, or whose credentials file was lost): set the password and the legacy token
    and enable legacy tokens, through Django in the Label Studio venv."""
    python = exe.with_name("python.exe" if os.name == "nt" else "python")
    proc = subprocess.run(
        [str(python), "-c", _REPAIR_SCRIPT],
        input=json.dumps(creds),
        env=env,
        cwd=data_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 or "repaired" not in proc.stdout:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise LocalStudioError(f"could not apply the stored credentials to the database in {data_dir}:\n{tail}")


def start(
    data_dir: Path,
    *,
    port: int = 8080,
    venv_dir: Path = Path(".venv-ls"),
    timeout: float = 180,
    version: str = DEFAULT_VERSION,
    database: str = "sqlite",
    postgres_port: int | None = None,
) -> LocalStudio:
    """Start a headless Label Studio bound to 127.0.0.1:port with its data in data_dir, on SQLite or on
    a private PostgreSQL cluster in data_dir/postgres (listening on 127.0.0.1:postgres_port, None: a free
    port); wait until /health answers and the API token works; return the handle.

    If the port already serves a Label Studio that accepts the stored token, that server is reused
    (pid=None; stop() leaves it alone)."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    if database not in STUDIO_DATABASES:
        raise ValueError(f"database must be one of {list(STUDIO_DATABASES)}, got {database!r}")
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database holds the tokens
    creds = _load_or_create_credentials(data_dir)
    url = f"http://127.0.0.1:{port}"

    if port_in_use(port):
        if _healthy(url) and _token_works(url, creds["token"]):
            log.info("reusing the Label Studio already running at %s", url)
            return LocalStudio(url, creds["username"], creds["password"], creds["token"], data_dir, None)
        raise LocalStudioError(
            f"port {port} on 127.0.0.1 is already in use by something that is not a Label Studio accepting "
            f"the credentials in {data_dir / CREDENTIALS_FILE}; stop it or choose another port"
        )

    exe = ensure_installed(_resolve_venv(Path(venv_dir)), version)
    env = _server_env(data_dir, creds)
    postgres = None
    if database == "postgresql":
        postgres = pgcluster.start(data_dir, creds["postgres_password"], port=postgres_port)
        env.update(postgres.django_env())
    cmd = [
        str(exe),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    log_path = data_dir / LOG_FILE
    t0 = time.monotonic()
    try:
        with open(log_path, "ab") as log_fh:
            log_offset = log_fh.tell()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=data_dir,
                start_new_session=True,
            )
    except BaseException:
        if postgres is not None:
            pgcluster.stop(postgres)
        raise
    studio = LocalStudio(url, creds["username"], creds["password"], creds["token"], data_dir, proc.pid, proc,
                         postgres)
    log.info("starting Label Studio (pid %d) at %s, data in %s, log %s", proc.pid, url, data_dir, log_path)
    try:
        _wait_ready(studio, proc, deadline=t0 + timeout, log_offset=log_offset)
        if not _token_works(url, creds["token"]):
            log.warning("stored API token rejected by %s; applying the stored credentials", url)
            _repair_credentials(exe, env, creds, data_dir)
            if not _token_works(url, creds["token"]):
                raise LocalStudioError(
                    f"Label Studio at {url} rejects the token stored in {data_dir / CREDENTIALS_FILE}"
                )
    except BaseException:
        stop(studio)
        raise
    log.info("Label Studio ready at %s after %.1f s", url, time.monotonic() - t0)
    return studio


def _wait_ready(studio: LocalStudio, proc: subprocess.Popen, deadline: float, log_offset: int) -> None:
    port_moved = f"Port {studio.url.rsplit(':', 1)[1]} is in use"
    delay = 0.2
    while True:
        rc = proc.poll()
        if rc is not None:
            raise LocalStudioError(
                f"Label Studio exited with code {rc} before it was ready; last lines of {studio.log_path}:\n"
                f"{_log_tail(studio.log_path, offset=log_offset)}"
            )
        # Label Studio silently moves to the next free port when its port is taken (here: by someone
        # else between our check and its start); whatever answers on ours then is not our server.
        if port_moved in _log_tail(studio.log_path, 200, log_offset):
            raise LocalStudioError(f"port in use: {studio.url} was taken while Label Studio started")
        if _healthy(studio.url):
            return
        if time.monotonic() >= deadline:
            raise LocalStudioError(
                f"Label Studio did not answer {studio.url}/health in time; last lines of {studio.log_path}:\n"
                f"{_log_tail(studio.log_path, offset=log_offset)}"
            )
        # poll interval (readiness is decided by /health and the deadline above)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)


def stop(studio: LocalStudio, timeout: float = 15) -> None:
    """SIGTERM the server's process group, wait up to timeout, then SIGKILL it; then stop its PostgreSQL
    server, if any. No-op for a reused server (pid None)."""
    if studio.pid is None:
        return
    try:
        _stop_server(studio, timeout)
    finally:
        if studio.postgres is not None:
            pgcluster.stop(studio.postgres)


def _stop_server(studio: LocalStudio, timeout: float) -> None:
    pid, proc = studio.pid, studio._proc
    studio.pid = None
    studio._proc = None

    def alive() -> bool:
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)  # the server is the leader of its own session / group
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        if proc is not None:
            try:
                proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.1)
    if alive():
        log.warning("Label Studio (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
        signal_group(signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=10)
    log.info("Label Studio (pid %d) stopped", pid)


@contextmanager
def running(data_dir: Path, **kw) -> Iterator[LocalStudio]:
    """Start Label Studio (see start()), yield the handle, stop it on exit."""
    studio = start(data_dir, **kw)
    try:
        yield studio
    finally:
        stop(studio)
