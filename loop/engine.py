"""Where pool compute runs: embeddings, the learner's interim outputs G(x) and R's scores over many items.

Two engines run the same batches through the same workers: `local` in this process, batch after batch;
`ray` on a warm pool of Ray actors, each of which loads a model once and keeps it (and takes `num_gpus`
when the cluster has GPUs). The pool lives as long as the process: embedding, then scoring, then the next
round's scoring reuse the same actors, so actor start-up and imports are paid once, not per stage (a Ray
Data `map_batches` starts a new actor pool for every call: measured 10-15 s a stage, BENCHMARKS.md). The
work is cut into batches before it runs, generation along the learner's own length-sorted batches
(`learner.plan`), so both engines compute every output in the same company and store the same strings.
Finished batches stream back and are written to the ledger as they arrive: a crash or a lost worker loses
at most the batches in flight, a batch that raises loses only itself (the rest are stored, then
`EngineError` says what failed), and a re-run computes only what the ledger lacks. The only module that
imports ray.
"""

from __future__ import annotations

import hashlib
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
    """Runs a worker on a warm pool of Ray actors: each planned batch is one task, and finished batches
    stream back as they complete (in any order: every row carries its pool id). The pool outlives a call:
    the next stage or round reuses the same processes and any model they already hold."""

    name = "ray"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings

    def map(self, worker: type, kwargs: dict[str, Any], batches: list[Batch]) -> Iterator[Batch]:
        if not batches:
            return
        ray = connect(self.settings)
        pool = _pool(ray, self.settings)
        import cloudpickle

        spec = cloudpickle.dumps((worker, kwargs))
        key, stored = hashlib.sha256(spec).hexdigest(), ray.put(spec)  # one copy, whatever the batch count
        todo, running = list(reversed(batches)), {}
        try:
            while todo or running:
                for actor in pool.idle(running, 2):  # two per actor: the next batch waits in its queue, not here
                    if todo:
                        batch = todo.pop()
                        running[actor.run.remote(worker.__qualname__, key, stored, batch)] = (actor, batch)
                done, _ = ray.wait(list(running), num_returns=1)
                actor, batch = running.pop(done[0])
                yield _collect(ray, pool, actor, batch, done[0], worker)
        finally:
            for ref in running:  # an abandoned map (the caller stopped, or an error) leaves nothing queued
                ray.cancel(ref)


def _collect(ray: Any, pool: _Pool, actor: Any, batch: Batch, ref: Any, worker: type) -> Batch:
    """One finished task's rows; a lost actor (killed, out of memory) loses only its batch and is replaced."""
    try:
        return ray.get(ref)
    except LabelloopError:  # raised by a worker's set-up (a model that cannot load): says what to fix
        raise
    except ray.exceptions.RayActorError as exc:
        pool.replace(actor)
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log.warning("ray engine: an actor was lost with %d items in flight: %s", len(batch["id"]), why)
        return {"id": batch["id"], "error": np.full(len(batch["id"]), f"lost ray actor: {why}", dtype=object)}
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        raise EngineError(f"ray engine: {worker.__name__} stopped: {first}") from exc


class _Host:
    """One warm actor: builds a worker on first use and keeps the newest of each worker class (a new
    learner version replaces the old one, so memory holds one model per class)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, Any]] = {}

    def run(self, name: str, key: str, spec: bytes, batch: Batch) -> Batch:
        """`batch` through the held `name` worker, built from `spec` first when `key` is not the one held."""
        if self.held.get(name, ("",))[0] != key:
            import cloudpickle

            self.held.pop(name, None)  # free the old model before loading the new one
            worker, kwargs = cloudpickle.loads(spec)
            self.held[name] = (key, worker(**kwargs))
        return self.held[name][1](batch)


class _Pool:
    """The warm actors of one Ray session and engine shape (actors, CPUs and GPUs per actor)."""

    def __init__(self, ray: Any, size: int, cpus: float, gpus: float) -> None:
        self.make = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(_Host).remote
        self.actors = [self.make() for _ in range(size)]
        self.ray = ray

    def idle(self, running: dict, per_actor: int) -> list[Any]:
        """Actors with fewer than `per_actor` tasks in `running`, the least busy first."""
        busy = {}
        for actor, _ in running.values():
            busy[id(actor)] = busy.get(id(actor), 0) + 1
        return sorted((a for a in self.actors if busy.get(id(a), 0) < per_actor), key=lambda a: busy.get(id(a), 0))

    def replace(self, actor: Any) -> None:
        if actor in self.actors:
            self.actors[self.actors.index(actor)] = self.make()
            self.ray.kill(actor)


_POOLS: dict[tuple, _Pool] = {}


def _pool(ray: Any, s: EngineSettings) -> _Pool:
    """The warm pool for this Ray session and shape, started on first use (a new `ray.init` starts anew)."""
    gpus = s.num_gpus if s.num_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
    context = ray.get_runtime_context()
    key = (context.gcs_address, context.get_job_id(), s.actors, s.cpus_per_actor, gpus)
    if key not in _POOLS:
        for old_key, old in list(_POOLS.items()):  # one pool at a time: another shape's actors hold the CPUs
            if old_key[:2] == key[:2]:
                for actor in old.actors:
                    ray.kill(actor)
            del _POOLS[old_key]  # (a Ray session that ended took its actors with it)
        _POOLS[key] = _Pool(ray, s.actors, s.cpus_per_actor, gpus)
    return _POOLS[key]


def connect(settings: EngineSettings) -> Any:
    """The ray module, joined to the configured cluster (`ray_address`) or to a private local Ray on
    127.0.0.1 that this process starts once (Ray shuts it down at exit)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("engine.kind = 'ray' needs Ray: pip install 'labelloop[ray]'") from None
    if not ray.is_initialized():
        where = settings.ray_address or "a private local Ray"
        try:
            if settings.ray_address is None:
                _start_private(ray, settings.local_cpus)
            else:
                _probe(settings.ray_address)
                ray.init(address=settings.ray_address)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            raise EngineError(f"engine.ray_address: cannot start or join {where}: {exc}") from None
        log.info("ray engine: %s, resources %s", where, ray.cluster_resources())
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless HOST:PORT of a cluster address ('HOST:PORT' or 'ray://HOST:PORT') accepts
    a TCP connection within `timeout` s. `ray.init` itself retries an address that nothing answers for ever,
    logging every 30 s, so a mistyped `ray_address` would hang the scheduler instead of failing. 'auto' and
    other forms are left to Ray, which fails fast on them."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in hostport:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} within {timeout:g} s ({exc})") from None


def _start_private(ray: Any, cpus: int | None) -> None:
    """Start the private local Ray from a thread that lives as long as this process. Ray ties its GCS and
    raylet to the thread that starts them (the parent-death signal): started from a scheduler job's or a
    request's thread, they died when that thread ended, the process stopped 60 s later, and Ray's agents
    were left running as orphans."""
    import threading

    started, failed = threading.Event(), []

    def hold() -> None:
        try:
            # Ray runs workers at nice 15; this private Ray does the loop's own work, which must not
            # starve whenever anything else runs on the machine (the local path runs at nice 0)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     _system_config={"worker_niceness": 0})
        except Exception as exc:  # handed to the caller, which says what failed
            failed.append(exc)
            return
        finally:
            started.set()
        threading.Event().wait()  # hold the thread: Ray's own exit handler stops the node at exit

    threading.Thread(target=hold, name="labelloop-ray", daemon=True).start()
    started.wait()
    if failed:
        raise failed[0]


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
