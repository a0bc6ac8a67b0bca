"""Fast greedy generation for the learner G with CTranslate2 (converted from the HF checkpoint).

HF `generate` (loop.learner) stays the reference; this runtime gives the same greedy outputs in
float32 (int8 is faster and agrees on most, not all, items). A checkpoint is converted once into a
cache directory keyed by its path and weight mtimes, so a retrained version (rewritten atomically by
`learner.fine_tune`) gets a fresh conversion and a stale one is never used. Translators load once per
process per converted directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loop.checkpoint import identity
from loop.vocab import RUNTIMES

_COMPUTE = {"ct2": "float32", "ct2-int8": "int8"}
_TRANSLATORS: dict[str, Any] = {}
_LOCK = threading.RLock()


def default_cache_dir() -> Path:
    """Where conversions go when the caller names no directory (the project passes its models dir)."""
    return Path(os.environ.get("LABELLOOP_CT2_CACHE", Path(tempfile.gettempdir()) / "labelloop-ct2"))


def compute_type(runtime: str) -> str:
    """CTranslate2 compute type of a runtime name; a clear error lists the known runtimes."""
    try:
        return _COMPUTE[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}") from None


def _source_key(model: str) -> tuple[str, str]:
    key, stamp = identity(model)
    return key, hashlib.sha1(json.dumps([key, stamp], default=str).encode()).hexdigest()[:16]


def convert(model: str, runtime: str = "ct2", cache_dir: str | Path | None = None) -> Path:
    """Converted CTranslate2 directory for `model` (converting once; older conversions of it are removed)."""
    quant = compute_type(runtime)
    key, digest = _source_key(model)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"{digest}-{quant}"
    if (out / "model.bin").is_file():
        return out
    from ctranslate2.converters import TransformersConverter

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=root))
    try:
        TransformersConverter(key, load_as_float16=False).convert(str(tmp / "m"), quantization=quant, force=True)
        (tmp / "m" / "labelloop-source.json").write_text(json.dumps({"source": key, "compute_type": quant}))
        try:
            os.replace(tmp / "m", out)
        except OSError:  # another process (a second Ray actor) converted the same model first: use that one
            if not (out / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(root, key, quant, keep=out)
    return out


def _drop_conversions(paths: Iterable[Path], key: str, keep: Path | None = None) -> int:
    """Delete the conversions among `paths` made from source `key` (except `keep`); returns how many."""
    removed = 0
    for other in paths:
        if other == keep:
            continue
        try:
            meta = json.loads((other / "labelloop-source.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source") == key:
            with _LOCK:
                _TRANSLATORS.pop(str(other), None)
            shutil.rmtree(other, ignore_errors=True)
            removed += 1
    return removed


def _remove_stale(root: Path, key: str, quant: str, keep: Path) -> None:
    """Delete earlier conversions of the same source (its weights were rewritten since)."""
    _drop_conversions(root.glob(f"*-{quant}"), key, keep)


def remove_conversions(model: str, cache_dir: str | Path | None = None) -> int:
    """Delete every conversion of `model` (used when a version's checkpoint is pruned); returns how many."""
    key, _ = _source_key(model)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _drop_conversions(root.glob("*-*"), key)


def translator(path: Path, threads: int | None = None):
    """A CTranslate2 Translator for a converted directory, loaded once per process.

    One single-threaded worker per thread (inter_threads), not one batch over several threads
    (intra_threads): a small model gains little from splitting one batch's matrices, and with
    OMP_WAIT_POLICY=PASSIVE (loop/threads.py) the threads' hand-offs cost more than the work (2 cores,
    quiet: 638 items/s against 112; BENCHMARKS.md). Each batch still runs whole on one worker, so the
    outputs are the same strings."""
    import ctranslate2
    import torch

    with _LOCK:
        hit = _TRANSLATORS.get(str(path))
        if hit is None:
            torch_threads = torch.get_num_threads()
            hit = ctranslate2.Translator(
                str(path), device="cpu", inter_threads=threads or torch_threads, intra_threads=1
            )
            torch.set_num_threads(torch_threads)  # the translator set OpenMP's count to 1 for the whole process
            _TRANSLATORS[str(path)] = hit
        return hit


def generate_batches(
    model: str,
    batches: list[list[str]],
    tokenizer: Any,
    *,
    runtime: str,
    max_new_tokens: int,
    max_source_tokens: int,
    cache_dir: str | Path | None = None,
    on_batch: Any = None,
) -> dict[str, str]:
    """Greedy outputs for already length-sorted batches of unique texts: text -> output.

    Every batch is submitted at once, whole (max_batch_size = its size: the same company as with one
    worker), and the translator's workers take them in turn; results are read back in order."""
    engine = translator(convert(model, runtime, cache_dir))
    pending = []
    for batch in batches:
        ids = tokenizer(batch, truncation=True, max_length=max_source_tokens).input_ids
        tokens = [tokenizer.convert_ids_to_tokens(x) for x in ids]
        pending.append(engine.translate_batch(
            tokens, beam_size=1, max_decoding_length=max_new_tokens, max_batch_size=len(batch),
            return_scores=False, asynchronous=True,
        ))
    out: dict[str, str] = {}
    for batch, waiting in zip(batches, pending, strict=True):
        results = [w.result() for w in waiting]
        hyps = [tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        decoded = tokenizer.batch_decode(hyps, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        out.update(zip(batch, (d.strip() for d in decoded), strict=True))
        if on_batch is not None:
            on_batch(len(batch))
    return out
