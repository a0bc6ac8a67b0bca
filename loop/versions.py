"""The learner's versions: the dev split, the promotion gate, rollback and pruning of old checkpoints.

Every trained checkpoint gets a version number and its metrics in the ledger. Verified pairs are split
by a hash of their source into train, select (early stopping) and gate pairs from the first round on.
The gate promotes a new version only when its loss on the gate pairs is no worse than the version in
use; a worse one is kept (status 'held', with a note saying why) and can still be promoted by hand
with `rollback`.
Only the last `keep_last` trained checkpoints stay on disk, plus the one in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loop.errors import VersionError
from loop.ledger import Ledger
from loop.vocab import version_number


@dataclass(frozen=True)
class DevSplit:
    """The verified pairs in three hash-stable parts: `train` (the learner fits on these), `select`
    (early stopping picks the best epoch on these) and `gate` (the promotion gate compares child and
    parent on these, which neither model trained or selected on)."""

    train: list[tuple[str, str]]
    select: list[tuple[str, str]]
    gate: list[tuple[str, str]]

    @property
    def held_out(self) -> int:
        return len(self.select) + len(self.gate)


def dev_bucket(source: str) -> float:
    """Where a source falls in [0, 1): a hash, so a pair's side never changes as the verified set grows."""
    return int(hashlib.sha1(source.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000


def split_dev(pairs: list[tuple[str, str]], fraction: float) -> DevSplit:
    """Split verified pairs by the hash of their source: below `fraction / 2` is `select`, below
    `fraction` is `gate`, the rest is `train`. Membership is decided from the first round and never
    depends on how many pairs exist, so no model ever trains on a pair that later judges it."""
    train, select, gate = [], [], []
    for pair in pairs:
        b = dev_bucket(pair[0])
        (select if b < fraction / 2 else gate if b < fraction else train).append(pair)
    return DevSplit(train, select, gate)


def gate(new_loss: float, current_loss: float, current: str, pairs: int) -> tuple[bool, str]:
    """(promote?, note): promote when the new version's loss on the gate pairs is no worse than the
    current version's; the note carries both losses."""
    verdict = "promoted" if new_loss <= current_loss else "held: worse on the gate pairs than"
    return new_loss <= current_loss, (
        f"{verdict} {current} (gate loss {new_loss:.4f} vs {current_loss:.4f} on {pairs} held-out pairs)"
    )


LOCK_FILE = ".versions.lock"


@contextmanager
def models_lock(models_dir: str | Path, timeout: float = 300.0) -> Iterator[None]:
    """Exclusive lock over the learner's versions across processes: registering a trained version,
    pruning and rollback take it, so a rollback can neither be overwritten by a training step that
    finishes later nor point at a checkpoint a prune is deleting. Released on exit, even on kill -9.

    Raises VersionError when another process holds it for longer than `timeout` seconds."""
    path = Path(models_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise VersionError(
                        f"{path}: another labelloop process has held the versions lock for {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)  # held for a ledger write and a prune: milliseconds
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def rollback(ledger: Ledger, version: str, models_dir: str | Path | None = None) -> dict:
    """Make an earlier (or held) version the one in use; returns its row. With `models_dir`, under
    the versions lock (see `models_lock`).

    Raises VersionError (naming the known versions) for an unknown, pruned or missing checkpoint."""
    if models_dir is not None:
        with models_lock(models_dir):
            return rollback(ledger, version)
    row = ledger.find_model_version(version)
    if row is None:
        known = ", ".join(sorted((v["version"] for v in ledger.model_versions()), key=version_number))
        raise VersionError(f"no learner version {version!r}; known: {known or 'none'}")
    if row.get("pruned"):
        raise VersionError(f"{version}'s checkpoint was removed from disk (learner.keep_last); it cannot be used")
    if Path(row["path"]).is_absolute() and not Path(row["path"]).exists():
        raise VersionError(f"{version}'s checkpoint {row['path']} is missing on disk")
    ledger.promote_model(version, note=f"{row.get('note') or ''} | promoted by hand".strip(" |"))
    return ledger.get_model_version(version)


def prune(ledger: Ledger, models_dir: str | Path, keep_last: int, ct2_cache: str | Path | None = None) -> list[str]:
    """Delete checkpoints of trained versions beyond the newest `keep_last` (never the one in use);
    returns the versions pruned. Only directories inside `models_dir` are ever deleted."""
    from loop import runtime

    models_dir = Path(models_dir).resolve()
    current = ledger.find_current_model()
    in_use = current["version"] if current else None
    trained = [v for v in ledger.model_versions() if v.get("round_id") is not None and not v.get("pruned")]
    trained.sort(key=lambda v: version_number(v["version"]))
    pruned = []
    for v in trained[: max(0, len(trained) - keep_last)]:
        path = Path(v["path"]).resolve()
        if v["version"] == in_use or models_dir not in path.parents:
            continue
        if ct2_cache is not None and path.exists():
            runtime.remove_conversions(str(path), ct2_cache)
        shutil.rmtree(path, ignore_errors=True)
        ledger.mark_model_pruned(v["version"])
        pruned.append(v["version"])
    return pruned


TEMPORARY_PATTERNS = (".*.tmp-*", ".*.old-*")  # learner.fine_tune's and runtime.convert's atomic-write leftovers


def sweep_temporaries(models_dir: str | Path) -> list[Path]:
    """Delete what a killed training or conversion left behind (each a model-sized directory) in
    `models_dir` and its CTranslate2 cache; returns what was removed. Call it only where no training
    can run meanwhile: under the project's lock, and it takes the versions lock itself."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    removed = []
    with models_lock(root):
        for folder in (root, root / ".ct2"):
            for pattern in TEMPORARY_PATTERNS:
                for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    removed.append(path)
    return removed
