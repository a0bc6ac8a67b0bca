"""Shared fixtures: one real Label Studio server for the whole test run."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loop.localstudio import LocalStudio, running
from loop.studio import Studio

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStudio]:
    """A real Label Studio (label-studio 1.23.2 from .venv-ls, installed there if missing), started once
    per test session on a free loopback port with its data in a temporary directory; ready in about
    30 s cold, stopped (SIGTERM, then SIGKILL after 15 s) at the end of the session."""
    data_dir = tmp_path_factory.mktemp("label-studio")
    with running(data_dir, port=_free_port(), venv_dir=ROOT / ".venv-ls", timeout=180) as studio:
        yield studio


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """A fresh folder for a PostgreSQL cluster, removed afterwards. Under the system's temp dir, not pytest's:
    run as root, the server runs as the postgres user, who cannot enter pytest's 0700 base folder."""
    path = Path(tempfile.mkdtemp(prefix="labelloop-pg-"))
    path.chmod(0o755)  # as a plain mkdir makes it: a data_dir below it must be reachable as well
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def studio(label_studio: LocalStudio) -> Studio:
    """A Studio client for the session's Label Studio, authenticated with its legacy API token."""
    return Studio(label_studio.url, label_studio.token)


@pytest.fixture(scope="session")
def starter_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small offline learner: `models/starter` when `make` built it, else a quick build here."""
    built = ROOT / "models" / "starter"
    if (built / "config.json").exists():
        return built
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_starter_model", ROOT / "scripts" / "build_starter_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("starter") / "starter"
    return module.build(out, ROOT / "data/paradetox/starter.tsv", ROOT / "data/paradetox/pool.tsv", steps=60, seed=0)


@pytest.fixture
def small_pool(tmp_path: Path) -> Path:
    """The first 60 rows of the bundled pool as a TSV file of its own."""
    path = tmp_path / "pool.tsv"
    lines = (ROOT / "data" / "paradetox" / "pool.tsv").read_text(encoding="utf-8").splitlines()[:61]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
