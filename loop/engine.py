"""Where pool compute runs: embeddings, the learner's interim outputs G(x) and R's scores over many items.

Two engines run the same batches through the same workers: `local` in this process, batch after batch;
`ray` as a Ray Data pipeline, `map_batches` over an actor pool in which each actor loads its models once
(and takes `num_gpus` when the cluster has GPUs). The work is cut into batches before it runs, generation
along the learner's own length-sorted batches (`learner.plan`), so both engines compute every output in
the same company and store the same strings. Finished batches stream back and are written to the ledger
as they arrive: a crash or a lost worker loses at most the batches in flight, a batch that raises loses
only itself (the rest are stored, then `EngineError` says what failed), and a re-run computes only what
the ledger lacks. The only module that imports ray.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from loop import embed as embed_mod
from loop import scorer as scorer_mod
from loop.config import EngineSettings, Settings
from loop.errors import ConfigError, EngineError, LabelloopError
from loop.ledger import Ledger

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]  # columns; rows that share a `batch` number are one planned batch
ScorerFactory = Callable[[], tuple[str, scorer_mod.Scorer]]  # build_one / build_scorer with arguments bound


# --- workers: one per process (local) or per actor (ray); models load in __init__, once -----------
class Embedder:
    """Embeds planned batches of pool texts with one sentence-transformers model."""

    def __init__(self, model: str, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size
        encoder = embed_mod.load(model)  # sentence-transformers 5 renamed the method; 3 and 4 have the old name
        self.dim = getattr(encoder, "get_embedding_dimension", encoder.get_sentence_embedding_dimension)()

    def __call__(self, batch: Batch) -> Batch:
        return _each(batch, self._one, {"vector": lambda n: np.zeros((n, self.dim), np.float32)})

    def _one(self, part: Batch) -> Batch:
        return {"vector": embed_mod.embed(part["text"].tolist(), model=self.model, batch_size=self.batch_size)}


class Rater:
    """Writes interim outputs with the learner for the batches that need them (`generate` set) and scores
    every batch's interim outputs with R."""

    def __init__(self, model: str | None, options: dict[str, Any], make_scorer: ScorerFactory) -> None:
        self.model, self.options = model, options
        if model is not None:
            from loop import learner  # torch loads only where a learner runs

            learner.load(model)
        self.signature, self.scorer = make_scorer()

    def __call__(self, batch: Batch) -> Batch:
        return _each(batch, self._one, {"interim": lambda n: np.full(n, "", object), "score": lambda n: np.zeros(n)})

    def _one(self, part: Batch) -> Batch:
        interims = part["interim"].tolist()
        if part["generate"].any():
            from loop import learner

            interims = learner.generate(self.model, part["text"].tolist(), **self.options)
        scores = scorer_mod.score_texts(self.scorer, interims)
        return {"interim": np.array(interims, dtype=object), "score": np.array(scores, dtype=np.float64)}


def _each(batch: Batch, run: Callable[[Batch], Batch], blank: dict[str, Callable[[int], np.ndarray]]) -> Batch:
    """`run` on each planned batch in `batch`, the outputs stacked with an `error` column: "" where it ran,
    the exception where it raised (those rows get `blank` values and are not stored)."""
    parts = []
    numbers = np.asarray(batch["batch"])
    for number in dict.fromkeys(numbers.tolist()):
        rows = numbers == number
        part = {k: np.asarray(v)[rows] for k, v in batch.items()}
        size, error = int(rows.sum()), ""
        try:
            got = run(part)
        except Exception as exc:  # one batch's failure must not lose the others; the driver reports it
            log.warning("engine batch %s failed: %s: %s", number, type(exc).__name__, exc)
            got, error = {k: make(size) for k, make in blank.items()}, f"{type(exc).__name__}: {exc}"
        parts.append({"id": part["id"], **got, "error": np.full(size, error, dtype=object)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- engines -------------------------------------------------------------------------------------
class LocalEngine:
    """Runs a worker in this process over the batches, one after another."""

    name = "local"

    def map(self, worker: type, kwargs: dict[str, Any], batches: list[Batch]) -> Iterator[Batch]:
        if batches:
            run = worker(**kwargs)
            for batch in batches:
                yield run(batch)


class RayEngine:
    """Runs a worker as a Ray Data `map_batches` over an actor pool; each planned batch is one block, and
    finished blocks stream back as they complete (in any order: every row carries its pool id)."""

    name = "ray"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings

    def map(self, worker: type, kwargs: dict[str, Any], batches: list[Batch]) -> Iterator[Batch]:
        if not batches:
            return
        ray = connect(self.settings)
        import pyarrow as pa

        s = self.settings
        gpus = s.num_gpus if s.num_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
        blocks = ray.data.from_arrow([pa.table(b) for b in batches])  # one block per planned batch
        mapped = blocks.map_batches(
            worker, fn_constructor_kwargs=kwargs, batch_size=None, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(s.actors, len(batches))), num_cpus=s.cpus_per_actor,
            num_gpus=gpus,
        )
        try:
            yield from mapped.iter_batches(batch_size=None, batch_format="numpy")
        except LabelloopError:  # raised by a worker's set-up (a model that cannot load): says what to fix
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
            raise EngineError(f"ray engine: {worker.__name__} stopped: {first}") from exc


def connect(settings: EngineSettings) -> Any:
    """The ray module, joined to the configured cluster (`ray_address`) or to a private local Ray on
    127.0.0.1 that this process starts once (Ray shuts it down at exit)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("engine.kind = 'ray' needs Ray: pip install 'labelloop[ray]'") from None
    if not ray.is_initialized():
        where = settings.ray_address or "a private local Ray"
        try:
            if settings.ray_address is None:
                # Ray runs workers at nice 15; this private Ray does the loop's own work, which must not
                # starve whenever anything else runs on the machine (the local path runs at nice 0)
                ray.init(address="local", num_cpus=settings.local_cpus, include_dashboard=False,
                         _node_ip_address="127.0.0.1", _system_config={"worker_niceness": 0})
            else:
                ray.init(address=settings.ray_address)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            raise EngineError(f"engine.ray_address: cannot start or join {where}: {exc}") from None
        log.info("ray engine: %s, resources %s", where, ray.cluster_resources())
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # labelloop draws its own bar from the batches that arrive
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def get(settings: Settings) -> LocalEngine | RayEngine:
    """The engine `settings.engine.kind` names."""
    return RayEngine(settings.engine) if settings.engine.kind == "ray" else LocalEngine()


# --- the driver: plan batches, run them, store each as it arrives ---------------------------------
def embed_pool(settings: Settings, ledger: Ledger, ids: list[int], *, progress: bool = False) -> int:
    """Embed the pool items `ids` with `embed.model`, storing each batch as it arrives; how many were stored.
    Raises EngineError when some batches failed (the others are stored)."""
    items = ledger.pool_items(ids)
    size = settings.engine.batch_size
    batches = [_columns(n, [it["id"] for it in chunk], text=[it["text"] for it in chunk])
               for n, chunk in enumerate(items[i : i + size] for i in range(0, len(items), size))]
    model = settings.embed.model
    return _run(get(settings), Embedder, {"model": model, "batch_size": settings.embed.batch_size}, batches,
                lambda out: ledger.put_embeddings(model, out["id"].tolist(), out["vector"]), "embed", progress)


def score_pool(settings: Settings, ledger: Ledger, *, key: str, signature: str, model: str,
               inputs: dict[int, str], stored: dict[int, str], make_scorer: ScorerFactory,
               progress: bool = False) -> int:
    """Store interim outputs and R's scores under (`key`, `signature`): generated by the learner at `model`
    from `inputs` (pool id -> learner input), or taken from `stored` (pool id -> this version's interim
    output under another R); each batch is written as it arrives. Returns how many were stored; raises
    EngineError when some batches failed (the others are stored)."""
    s = settings
    size = s.engine.batch_size
    known = sorted(stored)
    batches = [_columns(n, chunk, text=[""] * len(chunk), interim=[stored[i] for i in chunk], generate=False)
               for n, chunk in enumerate(known[i : i + size] for i in range(0, len(known), size))]
    options = {"batch_size": s.learner.batch_size, "max_new_tokens": s.learner.max_target_tokens,
               "max_source_tokens": s.learner.max_source_tokens, "runtime": s.learner.runtime,
               "cache_dir": str(s.models_dir / ".ct2")}
    if inputs:
        from loop import learner

        by_text: dict[str, list[int]] = {}
        for i, text in inputs.items():
            by_text.setdefault(text, []).append(i)
        planned = learner.plan(learner.load_tokenizer(model), list(by_text), s.learner.batch_size,
                               s.learner.max_source_tokens)
        per = max(1, -(-size // s.learner.batch_size))  # whole learner batches, so each keeps its company
        for start in range(0, len(planned), per):
            texts = [t for b in planned[start : start + per] for t in b]
            ids = [i for t in texts for i in by_text[t]]
            batches.append(_columns(len(batches), ids, text=[inputs[i] for i in ids], interim=[""] * len(ids),
                                    generate=True))
    worker = {"model": model if inputs else None, "options": options, "make_scorer": make_scorer}
    return _run(get(s), Rater, worker, batches, lambda out: ledger.put_scores(
        key, signature, out["id"].tolist(), out["interim"].tolist(), out["score"].tolist()), "score", progress)


def _columns(number: int, ids: list[int], **columns: Any) -> Batch:
    """One planned batch as columns: `id`, `batch` (= number) and the given columns (a scalar repeats)."""
    n = len(ids)
    out = {"id": np.asarray(ids, dtype=np.int64), "batch": np.full(n, number, dtype=np.int64)}
    for name, value in columns.items():
        out[name] = np.full(n, value) if np.isscalar(value) else np.asarray(value, dtype=object)
    return out


def _run(engine: LocalEngine | RayEngine, worker: type, kwargs: dict[str, Any], batches: list[Batch],
         store: Callable[[Batch], None], what: str, progress: bool) -> int:
    """Run `worker` over `batches` on `engine` and `store` the rows of each finished batch at once."""
    from tqdm.auto import tqdm

    total = sum(len(b["id"]) for b in batches)
    stored = failed = 0
    first = ""
    with tqdm(total=total, desc=f"{what} ({engine.name})", disable=not progress) as bar:
        for out in engine.map(worker, kwargs, batches):
            bad = np.array([bool(e) for e in out["error"]], dtype=bool)
            if bad.any():
                failed += int(bad.sum())
                first = first or str(out["error"][bad][0])
            if not bad.all():
                store({k: np.asarray(v)[~bad] for k, v in out.items()})
                stored += int((~bad).sum())
            bar.update(len(bad))
    if failed:
        raise EngineError(f"{what} ({engine.name} engine): {failed} of {total} items failed ({first}); the other"
                          f" {stored} are stored, and a re-run computes only the rest")
    return stored
