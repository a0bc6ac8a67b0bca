"""Checkpoint identity, without torch: which model a name or path means, and whether it was rewritten.

The learner's in-process model cache and the CTranslate2 conversion cache both key on this, so both
import it from here (and the runtime never has to load torch to stat a few weight files).
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")

Stamp = tuple[tuple[str, int], ...] | None


def identity(model: str | os.PathLike[str]) -> tuple[str, Stamp]:
    """(key, stamp): the absolute path of a local checkpoint directory (else the hub name as given), and
    the weight files' modification times, which change whenever the checkpoint is rewritten (None for
    a hub name)."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path.resolve()
        stamp = tuple((name, (path / name).stat().st_mtime_ns) for name in WEIGHT_FILES if (path / name).is_file())
        return str(path), stamp
    return str(model), None
