"""Simulate the active-learning loop offline: strategies side by side on one dataset, the paper's metrics.

Everything runs in this process, with no Label Studio and no ledger: the reference column plays the
teacher, a simulated verifier accepts every selected item (or rejects it at `reject_rate`), and the
learner is fine-tuned *from the starter* on all accepted pairs so far after every round (the paper
retrains on the growing labeled set). A held-out test split, drawn once from `split_seed`, is never
selectable; the same pool, clusters, test split, verifier verdicts and seeds are shared by every
strategy, so strategies differ only in what they pick. Checkpoints live in a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from loop import metrics
from loop.errors import SimulateError  # noqa: F401 (re-exported: callers catch it from here too)
from loop.ingest import IngestError, normalise, parse_pool
from loop.select import STRATEGIES, sample_per_cluster
from loop.vocab import STARTER_ARCHS as ARCHS
from loop.vocab import STRATEGIES as STRATEGY_NAMES
from loop.vocab import TASKS

log = logging.getLogger(__name__)

JUDGES = ("probe", "profanity")
START = {"retrain": "a fresh copy of the starter", "continue": "the previous round's learner"}
REGIMES = tuple(START)
OPTIMIZERS = ("adamw", "adafactor")
R_NAME = "profanity"  # the auxiliary model R that selects (alt-profanity-check)
# `simulate --quick`: minutes, not hours, on 2 cores; still 5 seeds (the default) so the tests can decide
QUICK = {"pool_size": 200, "test_size": 60, "rounds": 2, "budget": 16, "k": 4, "epochs": 1, "examples": 4,
         "starter_steps": 150}
SEED_PAIRS = 400  # `--starter build`: pairs the starter learns from before the budget (a few rounds' worth)




@dataclass
class SimConfig:
    """Everything one simulation needs; recorded verbatim in results.json."""

    data: str
    task: str = "style_transfer"  # or "counter_narration": the template, the failure rule, the report's wording
    instruction: bool = False  # give the learner the task template's instruction (off: the starter saw bare texts)
    relevance_threshold: float = 0.3  # counter-narration: a reply less similar to its input than this is off-topic
    text_col: str = "text"
    reference_col: str | list[str] = "reference"  # several: every one is a reference the test split is scored on
    group_col: str | None = None
    tag_groups: bool = False  # no group column: tag the target group each text mentions (loop/groups.py)
    out_dir: str = "simulate-out"
    learner: str = "models/starter"
    starter: str | None = None  # "build[:N]": on N pairs of `data` kept out of pool and test; "pool": copy the pool
    starter_steps: int = 600  # training steps of a built starter (models/starter's 600)
    starter_width: int = 128  # d_model of a built starter (loop/starter.py's WIDTH: about 1.5 M parameters)
    starter_arch: str = "bart"  # architecture of a built starter: bart copies faithfully at this size, t5 does not
    # a learner outside the loop, trained once on each run's acquired pairs (the paper's claim that the data helps
    # other models): a checkpoint directory, "width:W" (a starter built as --starter says at another width) or
    # "ARCH:W" (the same, as another architecture: t5:128, bart:96)
    second_learner: str | None = None
    # texts with a real group column (no reference needed) every final learner is also scored on: the spread
    # of failures (judged offensive, or degenerate) across groups that are not the clusters being sampled
    group_test: str | None = None
    group_test_group_col: str = "group"
    group_test_where: str | None = None  # "COL=VALUE": only the rows whose COL is VALUE (e.g. stance=hate)
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # >= 5: see loop/stats.py
    rounds: int = 5
    budget: int = 40
    k: int = 8
    k_sweep: list[int] = field(default_factory=list)  # stratified again at each K, against random (paper's Q3)
    pool_size: int = 2000
    test_size: int = 400
    split_seed: int = 0
    reject_rate: float = 0.0
    judge: str = "probe"  # "probe", "profanity", or the path of a probe file from loop.scorer.train_probe
    judge_data: str = "data/paradetox/starter.tsv"
    judge_text_col: str = "text"
    judge_negative_col: str = "reference"
    judge_threshold: float = 0.5
    chrf_threshold: float = 30.0
    epochs: int = 4
    lr: float = 3e-4
    regime: str = "retrain"  # "retrain": from the starter each round (the paper); "continue": from the last round's
    optimizer: str = "adamw"
    warmup: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 16
    max_new_tokens: int = 48
    test_data: str | None = None  # a dataset's own test split (same columns); else held out from `data`
    examples: int = 8  # test items whose outputs the report shows
    runtime: str = "ct2"
    candidates_per_cluster: int | None = None  # score a random sample of M per cluster each round; None: all
    lookahead: int = 0  # as the live loop's team.lookahead: round r is selected by the learner of round r-1-lookahead
    cache_dir: str = ".labelloop/cache"
    progress: bool = True

    def second_built(self) -> tuple[str, int] | None:
        """(architecture, width) of a built second learner (`width:W` or `ARCH:W`), else None (a directory)."""
        assert self.second_learner is not None
        w = _built_of(self.second_learner, self.starter_arch)
        if w is not None and self.starter is None:
            raise SimulateError(f"--second-learner {self.second_learner}: a built second learner needs --starter"
                                " (it is built the same way at another width); or give a checkpoint directory")
        if w is None and not (Path(self.second_learner) / "config.json").is_file():
            raise SimulateError(f"--second-learner {self.second_learner}: no checkpoint there; give a seq2seq"
                                " checkpoint directory or width:W")
        return w

    def check(self) -> None:
        """Raise SimulateError naming the first unusable setting."""
        if self.tag_groups and self.group_col:
            raise SimulateError("--tag-groups and --group-col: the data has a group column; use one or the other")
        if self.task not in TASKS:
            raise SimulateError(f"--task {self.task!r}: use {' or '.join(t.replace('_', '-') for t in TASKS)}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise SimulateError(f"--strategy {', '.join(unknown) or '(none)'}: known are {', '.join(STRATEGIES)}")
        if not self.seeds:
            raise SimulateError("--seeds: give at least one seed")
        if self.lookahead < 0:
            raise SimulateError(f"--lookahead must be >= 0 (got {self.lookahead})")
        if self.starter is not None:
            seed_pairs(self)  # raises on a malformed --starter
        for name in ("rounds", "budget", "k", "pool_size", "test_size", "epochs", "batch_size", "max_new_tokens",
                     "starter_steps", "candidates_per_cluster"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SimulateError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.second_learner is not None:
            self.second_built()  # raises on a malformed spec
        if self.starter_arch not in ARCHS:
            raise SimulateError(f"--starter-arch {self.starter_arch!r}: use {' or '.join(ARCHS)}")
        if _bad_width(self.starter_width):
            raise SimulateError(f"--starter-width must be a multiple of 32, at least 64 (two attention heads; got"
                                f" {self.starter_width})")
        if self.k_sweep and not {"stratified", "random"} <= set(self.strategies):
            raise SimulateError("--k " + ",".join(map(str, self.k_sweep)) + ": the sweep tests stratified at each K"
                                " against random; keep both in --strategy")
        if any(k < 1 for k in self.k_sweep):
            raise SimulateError(f"--k: every K must be >= 1 (got {','.join(map(str, self.k_sweep))})")
        if not 0 <= self.reject_rate < 1:
            raise SimulateError(f"--reject-rate must be in [0, 1) (got {self.reject_rate})")
        if self.regime not in REGIMES:
            raise SimulateError(f"--regime {self.regime!r}: use {' or '.join(REGIMES)}")
        if self.optimizer not in OPTIMIZERS:
            raise SimulateError(f"--optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        if not 0 <= self.warmup < 1:
            raise SimulateError(f"--warmup must be in [0, 1) (got {self.warmup})")
        if self.judge not in JUDGES and not Path(self.judge).is_file():
            raise SimulateError(f"--judge {self.judge!r}: use {' or '.join(JUDGES)}, or the path of a probe file")
        if self.judge == "probe":
            self.judge_data = str(_bundled(self.judge_data, "--judge-data"))
        if self.group_test is not None and not Path(self.group_test).is_file():
            raise SimulateError(f"--group-test {self.group_test}: file not found")
        if self.group_test_where is not None and "=" not in self.group_test_where:
            raise SimulateError(f"--group-test-where {self.group_test_where!r}: use COL=VALUE (e.g. stance=hate)")
        if self.test_data is not None and not Path(self.test_data).is_file():
            raise SimulateError(f"--test-data {self.test_data}: file not found")


def _bundled(path: str, flag: str) -> Path:
    """`path` as given, else inside the labelloop checkout (the bundled defaults work from any directory)."""
    given = Path(path)
    if given.is_file():
        return given
    checkout = Path(__file__).resolve().parent.parent / path
    if not given.is_absolute() and checkout.is_file():
        return checkout
    raise SimulateError(f"{flag} {path}: file not found (relative paths are read from the working directory)")


@dataclass
class Split:
    """The shared data of one simulation: pool and test rows, their clusters and subgroups."""

    pool_text: list[str]
    pool_ref: list[str]
    pool_cluster: np.ndarray
    test_text: list[str]
    test_ref: list[list[str]]  # every reference of each test item
    test_group: list[object]  # a group name, or the list of an item's groups
    skipped: list[int]  # file lines without a reference


def _usable(cfg: SimConfig, path: str) -> tuple[list[dict], list[int]]:
    """A file's rows that have a reference (and a group, with --group-col), and the lines without a reference."""
    try:
        rows, _ = parse_pool(path, text_col=cfg.text_col, reference_col=cfg.reference_col, group_col=cfg.group_col)
    except IngestError as exc:
        raise SimulateError(str(exc)) from None
    if all(r["reference"] is None for r in rows):
        raise SimulateError(f"{path}: reference column {cfg.reference_col!r} is missing or empty; "
                            "the reference plays the teacher, so it is required (--reference-col)")
    if cfg.group_col:
        missing = [r["line"] for r in rows if r["subgroup"] is None]
        if len(missing) == len(rows):
            raise SimulateError(f"{path}: group column {cfg.group_col!r} is missing or empty (--group-col)")
        if missing:
            raise SimulateError(f"{path}:{missing[0]}: column {cfg.group_col!r} is empty "
                                f"({len(missing)} rows lack a group)")
    return [r for r in rows if r["reference"] is not None], [r["line"] for r in rows if r["reference"] is None]


def load_group_test(cfg: SimConfig, pool: list[dict]) -> list[dict]:
    """The --group-test rows: a text and a real group each (no reference), only those matching
    --group-test-where, none whose text is in the pool (the learner may have trained on it)."""
    where_col, _, where_value = (cfg.group_test_where or "").partition("=")
    try:  # the filter column is read as the reference column: the reader checks it exists
        rows, _ = parse_pool(cfg.group_test, text_col=cfg.text_col, reference_col=where_col or None,
                             group_col=cfg.group_test_group_col)
    except IngestError as exc:
        raise SimulateError(f"--group-test: {exc}") from None
    missing = [r["line"] for r in rows if r["subgroup"] is None]
    if missing:
        raise SimulateError(f"{cfg.group_test}:{missing[0]}: column {cfg.group_test_group_col!r} is empty"
                            f" ({len(missing)} rows lack a group; --group-test-group-col)")
    if where_col:
        rows = [r for r in rows if r["reference"] == where_value]
    taken = {r["norm"] for r in pool}
    rows = [r for r in rows if r["norm"] not in taken]
    if not rows:
        raise SimulateError(f"--group-test {cfg.group_test}: no row left"
                            + (f" with {cfg.group_test_where}" if where_col else "") + " outside the pool")
    return rows


def _bad_width(width: int) -> bool:
    """A built starter's width must be a multiple of 32 (d_kv) with at least two heads (its copy circuit)."""
    return width < 64 or width % 32 != 0


def _built_of(spec: str, arch: str) -> tuple[str, int] | None:
    """(architecture, W) of a `width:W` (the starter's `arch`) or `ARCH:W` spec, else None (a checkpoint
    directory); raises SimulateError on a malformed W."""
    kind, _, w = spec.partition(":")
    if kind not in ("width", *ARCHS):
        return None
    if not w.isdigit() or _bad_width(int(w)):
        raise SimulateError(f"--second-learner {spec!r}: {kind}:W needs W a multiple of 32, at least 64 (two"
                            f" attention heads; e.g. {kind}:256)")
    return (arch if kind == "width" else kind), int(w)


def load_split(cfg: SimConfig) -> tuple[list[dict], list[dict], list[int]]:
    """(pool rows, test rows, lines skipped for lacking a reference), drawn once from `split_seed`.

    With `test_data` the test split is that file (up to test_size rows) and a pool text that is also
    a test text is dropped from the pool; else the test split is held out from `data`."""
    usable, skipped = _usable(cfg, cfg.data)
    rng = np.random.default_rng(cfg.split_seed)
    if cfg.test_data is not None:
        tests, _ = _usable(cfg, cfg.test_data)
        test = [tests[i] for i in rng.permutation(len(tests))[: cfg.test_size]]
        held = {r["norm"] for r in test}
        usable = [r for r in usable if r["norm"] not in held]
        if len(usable) < cfg.pool_size:
            raise SimulateError(f"{cfg.data}: {len(usable)} usable rows not in the test file; --pool-size"
                                f" {cfg.pool_size} needed")
        pool = [usable[i] for i in rng.permutation(len(usable))[: cfg.pool_size]]
        return pool, test, skipped
    need = cfg.pool_size + cfg.test_size
    if len(usable) < need:
        raise SimulateError(f"{cfg.data}: {len(usable)} usable rows (text and {cfg.reference_col!r}); "
                            f"--pool-size {cfg.pool_size} + --test-size {cfg.test_size} = {need} needed")
    order = rng.permutation(len(usable))
    test = [usable[i] for i in order[: cfg.test_size]]
    pool = [usable[i] for i in order[cfg.test_size : need]]
    return pool, test, skipped


def seed_pairs(cfg: SimConfig) -> int:
    """How many labelled pairs `--starter` trains the starter on: N of `build[:N]` (SEED_PAIRS unless
    given), 0 for `pool` (the self-supervised starter that only learned to copy the pool's texts)."""
    if cfg.starter == "pool":
        return 0
    kind, _, n = (cfg.starter or "").partition(":")
    if kind != "build" or (n and not n.isdigit()) or n == "0":
        raise SimulateError(f"--starter {cfg.starter!r}: use pool, build, or build:N with N >= 1 pairs")
    return int(n) if n else SEED_PAIRS


def seed_split(cfg: SimConfig, pool: list[dict], test: list[dict]) -> list[dict]:
    """The rows a built starter learns from: usable rows of `data` whose text is in neither the pool nor
    the test split, drawn from `split_seed` (pool and test are the same with or without a built starter);
    none for the pool starter, which learns from no labelled pair."""
    n = seed_pairs(cfg)
    if n == 0:
        return []
    usable, _ = _usable(cfg, cfg.data)
    taken = {r["norm"] for r in pool + test}
    rest = [r for r in usable if r["norm"] not in taken]
    if len(rest) < n:
        raise SimulateError(f"{cfg.data}: {len(rest)} usable rows outside pool and test; --starter build:{n} needs"
                            f" {n} (lower N, --pool-size or --test-size)")
    rng = np.random.default_rng([cfg.split_seed, 11])
    return [rest[i] for i in rng.permutation(len(rest))[:n]]


def build_starter(cfg: SimConfig, seed_rows: list[dict], pool: list[dict]) -> tuple[Path, dict]:
    """Train a starter for this data and task (loop/starter.py), cached in cache_dir by content; (path, facts).

    `build:N`: on the N seed rows (plus their references copied), the tokenizer fitted on seed and pool rows.
    `pool`: self-supervised, to copy each pool text (as the learner sees it) to itself, the tokenizer fitted on
    the pool's texts: no labelled pair, so all it knows of the task comes from the budget. Never the test split."""
    from loop import starter

    _, seen = _learner_view(cfg)  # the learner's inputs as fine-tuning will give them
    if seed_rows:
        pairs = [(seen(r["text"]), r["reference"]) for r in seed_rows]
        tok_texts = [t for r in seed_rows + pool for t in (seen(r["text"]), r["reference"])]
        copy_pairs, objective = starter.COPY_PAIRS, "pairs"
        tokenizer_data = (f"the {len(pairs)} seed pairs and the {len(pool)} pool rows (texts and first references);"
                          " no test rows")
    else:
        pairs = [(seen(r["text"]), r["text"]) for r in pool]
        tok_texts = [seen(r["text"]) for r in pool]
        copy_pairs, objective = False, "copy"
        tokenizer_data = f"the {len(pool)} pool texts only; no reference, no test rows"
    key = hashlib.sha1(json.dumps([pairs, tok_texts, cfg.starter_steps, cfg.starter_width, cfg.starter_arch,
                                   starter.VOCAB_SIZE,
                                   copy_pairs]).encode()).hexdigest()[:12]
    path = Path(cfg.cache_dir) / f"starter-{key}"
    if not starter.is_built(path):
        log.info("building a starter on %d %s pairs (%d steps; cached at %s)", len(pairs), objective,
                 cfg.starter_steps, path)
        t = time.perf_counter()
        model, tokenizer, facts = starter.train(pairs, tok_texts, steps=cfg.starter_steps, seed=cfg.split_seed,
                                                width=cfg.starter_width, copy_pairs=copy_pairs, progress=cfg.progress,
                                                arch=cfg.starter_arch)
        starter.save(model, tokenizer, path, {
            "built_by": f"labelloop simulate --starter {cfg.starter}", "data": cfg.data, "split_seed": cfg.split_seed,
            "objective": objective, "tokenizer_data": tokenizer_data, **facts,
            "seconds": round(time.perf_counter() - t, 1)})
        cached = False
    else:
        cached = True
    meta = json.loads((path / "labelloop.json").read_text(encoding="utf-8"))
    return path, {**meta, "path": str(path), "cached": cached}


def _digest(path: str | Path, *extra: object) -> str:
    h = hashlib.sha1(Path(path).read_bytes())
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()[:12]


def build_judge(cfg: SimConfig) -> tuple[Callable[[list[str]], list[float]], dict]:
    """The judge of offensiveness (never R unless asked) and facts about it for the report."""
    from loop import scorer

    if cfg.judge == "profanity":
        return scorer.profanity, {"kind": "profanity", "same_as_r": True}
    if cfg.judge == "probe":
        digest = _digest(cfg.judge_data, cfg.judge_text_col, cfg.judge_negative_col)
        path = Path(cfg.cache_dir) / f"judge-probe-{digest}.json"
        if not path.is_file():
            log.info("training the judge: an embedding probe on %s (cached at %s)", cfg.judge_data, path)
            try:
                texts, labels = scorer.read_labelled(cfg.judge_data, text_col=cfg.judge_text_col,
                                                     negative_col=cfg.judge_negative_col)
            except (OSError, ValueError) as exc:
                raise SimulateError(f"--judge-data: {exc}") from None
            scorer.train_probe(texts, labels, path, progress=cfg.progress)
    else:
        path = Path(cfg.judge)
    data = json.loads(path.read_text())
    info = {"kind": "embedding-probe", "file": str(path), "trained_on": data.get("trained_on", cfg.judge_data),
            "examples": data.get("examples"), "held_out_accuracy": data.get("held_out_accuracy"), "same_as_r": False}
    return scorer.load_probe(path), info


class _Memo:
    """Score each distinct text once (outputs repeat across strategies and seeds)."""

    def __init__(self, fn: Callable[[list[str]], list[float]]):
        self.fn, self.seen = fn, {}

    def __call__(self, texts: list[str]) -> list[float]:
        todo = sorted({t for t in texts if t not in self.seen})
        if todo:
            self.seen.update(zip(todo, self.fn(todo), strict=True))
        return [self.seen[t] for t in texts]


def run(cfg: SimConfig, *, command: str | None = None) -> dict:
    """Run every (strategy, seed) for `rounds` rounds; write results.json, plots and report.md to out_dir.

    `command` is the command line to print in the report (so a reader can rerun it)."""
    from tqdm.auto import tqdm

    from loop import learner, scorer
    from loop.cluster import assign as assign_clusters
    from loop.cluster import fit as fit_clusters
    from loop.embed import embed

    cfg.check()
    if cfg.starter is None and not (Path(cfg.learner) / "config.json").is_file():
        raise SimulateError(f"--learner {cfg.learner}: no model there (build models/starter with "
                            "scripts/build_starter_model.py, or give a seq2seq checkpoint directory)")
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool, test, skipped = load_split(cfg)
    group_rows = load_group_test(cfg, pool) if cfg.group_test is not None else None  # bad input fails here, early
    built = None
    if cfg.starter is not None:  # from here on the learner is the starter built for this data
        t = time.perf_counter()
        path, built = build_starter(cfg, seed_split(cfg, pool, test), pool)
        cfg = replace(cfg, learner=str(path))
        built["wall_s"] = round(time.perf_counter() - t, 1)
    judge_fn, judge_info = build_judge(cfg)
    judge, r_score = _Memo(judge_fn), _Memo(scorer.profanity)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    vectors = embed([r["text"] for r in pool + test], progress=cfg.progress)  # once per run
    # fitted on the pool alone (the test split must not shape the strata); test items join the nearest
    pool_cluster, centroids = fit_clusters(vectors[: len(pool)], k=cfg.k, seed=cfg.split_seed)
    test_cluster = assign_clusters(vectors[len(pool):], centroids)
    timings["embed_cluster_s"] = time.perf_counter() - t
    # the test split is scored against every reference of an item and counted in every group it is in
    test_text, test_ref = [r["text"] for r in test], [r["references"] for r in test]
    test_group = ([r["subgroups"] for r in test] if cfg.group_col else [f"cluster {c}" for c in test_cluster])
    subgroups = "group column " + cfg.group_col if cfg.group_col else f"KMeans clusters (K={cfg.k})"
    tagger_info = None
    if cfg.tag_groups:
        test_group, tagger_info = _tag(test_text)
        subgroups = "the target group each text mentions, tagged by loop/groups.py (`none`: no group)"
    pool_text, pool_ref = [r["text"] for r in pool], [r["reference"] for r in pool]
    template, seen = _learner_view(cfg)
    reply = cfg.task == "counter_narration"
    test_vectors, embed_memo = vectors[len(pool):], _Memo(lambda texts: list(embed(texts)))
    judge_info["flags_test_inputs"] = metrics.offensive_share(judge(test_text), cfg.judge_threshold)
    every_ref = [ref for refs in test_ref for ref in refs]
    judge_info["flags_test_references"] = metrics.offensive_share(judge(every_ref), cfg.judge_threshold)
    if cfg.judge == "probe":
        trained = {normalise(t) for t in scorer.read_labelled(cfg.judge_data, text_col=cfg.judge_text_col,
                                                               negative_col=cfg.judge_negative_col)[0]}
        judge_info["overlap_with_test"] = sum(normalise(t) in trained for t in test_text + every_ref)

    with tempfile.TemporaryDirectory(prefix="labelloop-sim-") as tmp:
        ct2_cache = Path(tmp) / ".ct2"

        def gen(model: str, texts: list[str]) -> list[str]:
            return learner.generate(model, texts, batch_size=64, max_new_tokens=cfg.max_new_tokens,
                                    runtime=cfg.runtime, cache_dir=ct2_cache)

        last_outputs: list[list[str]] = [[]]
        last_items: list[dict] = [{}]

        def evaluate(outputs: list[str]) -> dict:
            last_outputs[0] = outputs
            task = ({"inputs": test_text, "relevance_scores": metrics.relevance(np.asarray(embed_memo(outputs)),
                                                                                test_vectors),
                     "relevance_threshold": cfg.relevance_threshold} if reply else {})
            got = metrics.evaluate(outputs, test_ref, judge(outputs), test_group, judge_threshold=cfg.judge_threshold,
                                   chrf_threshold=cfg.chrf_threshold, items=True, **task)
            last_items[0] = got.pop("items")  # per-item values of the last evaluation, for the paired tests
            return got

        t = time.perf_counter()
        pool_in, test_in = [seen(t) for t in pool_text], [seen(t) for t in test_text]  # as the learner sees them
        starter_pool = gen(cfg.learner, pool_in)  # the starter is deterministic: shared by every run
        starter_metrics = evaluate(gen(cfg.learner, test_in))
        shown = min(cfg.examples, len(test_text))
        examples = [{"input": test_text[i], "references": test_ref[i], "starter": last_outputs[0][i], "final": {}}
                    for i in range(shown)]
        # what any learner has to beat: copying the input, and one reply for everything (the pool's most
        # common reference, else its shortest)
        constant = _constant_reply(pool_ref)
        baselines = {"copy_input": evaluate(list(test_text)),
                     "constant": {**evaluate([constant] * len(test_text)), "text": constant}}
        timings["starter_s"] = time.perf_counter() - t
        group_test = GroupTest(cfg, group_rows, gen, seen, judge) if group_rows is not None else None
        if group_test is not None:
            group_test.score("starter", None, cfg.learner)
        records: list[dict] = []
        final_items: dict[str, list[dict]] = {}  # strategy -> per-item values of each seed's last round
        acquired: dict[tuple[str, int], list[int]] = {}  # (strategy, seed) -> pool rows accepted over its rounds
        total = (len(cfg.strategies) + len(set(cfg.k_sweep) - {cfg.k})) * len(cfg.seeds) * cfg.rounds
        with tqdm(total=total, desc="simulate", disable=not cfg.progress) as bar:
            for seed in cfg.seeds:
                # the verifier's verdict on an item depends on the seed only, so strategies meet the same verdicts
                rejected = np.random.default_rng([seed, 7]).random(len(pool)) < cfg.reject_rate
                for strategy in cfg.strategies:
                    records.append({"strategy": strategy, "seed": seed, "round": 0, "labeled": 0, "selected": 0,
                                    "accepted": 0, **starter_metrics})
                    rows, acquired[strategy, seed], final = _one_run(
                        cfg, strategy, seed, rejected, pool_in, pool_ref, pool_cluster, starter_pool, test_in, gen,
                        evaluate, r_score, Path(tmp) / f"{strategy}-{seed}", bar)
                    records.extend(rows)
                    if group_test is not None:
                        group_test.score(strategy, seed, final)
                    final_items.setdefault(strategy, []).append(last_items[0])
                    if seed == cfg.seeds[0]:  # the examples show the first seed's last round
                        for i, ex in enumerate(examples):
                            ex["final"][strategy] = last_outputs[0][i]

            def stratified_at(seed: int, clusters: np.ndarray, k: int) -> dict:
                rejected = np.random.default_rng([seed, 7]).random(len(pool)) < cfg.reject_rate  # as above
                _one_run(cfg, "stratified", seed, rejected, pool_in, pool_ref, clusters, starter_pool, test_in, gen,
                         evaluate, r_score, Path(tmp) / f"stratified-k{k}-{seed}", bar)
                return last_items[0]

            sweep = _k_sweep(cfg, vectors[: len(pool)], final_items, test_group, not reply, stratified_at)
        group_result = group_test.result() if group_test is not None else None
        second = None
        if cfg.second_learner is not None:
            t = time.perf_counter()
            second = _second_learner(cfg, pool, test, acquired, pool_in, pool_ref, test_in, gen, evaluate,
                                     last_items, Path(tmp), test_group, not reply)
            timings["second_learner_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    result = {
        "command": command,
        "config": asdict(cfg),
        "data": {"file": cfg.data, "pool": len(pool), "test": len(test), "skipped_without_reference": skipped,
                 "subgroups": subgroups, "tagger": tagger_info,
                 "test_groups": metrics.group_rates([False] * len(test_group), test_group)},
        "r": R_NAME,
        "task": {"name": cfg.task, "template": f"{template.name}@{template.version}",
                 "learner_instruction": template.instruction if cfg.instruction else None,
                 "failure": _failure_rule(cfg)},
        "judge": judge_info,
        "starter": built,
        "baselines": baselines,
        "examples": examples,
        "tests": decide(final_items, test_group, ranked_by_chrf=not reply),
        "k_sweep": sweep,
        "second_learner": second,
        "group_test": group_result,
        "training": (f"each round fine-tunes {START[cfg.regime]} on all accepted pairs so far ({cfg.optimizer}, lr"
                     f" {cfg.lr:g}, warm-up {cfg.warmup:g} then linear decay, weight decay {cfg.weight_decay:g}"
                     " except norms and biases)"),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "records": records,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    from loop import simreport

    simreport.write(result, out)
    return result


def _tag(texts: list[str]) -> tuple[list[str], dict]:
    """Each text's target group from the bundled tagger, and facts about the tagger for the report."""
    from loop import groups

    tagger = groups.bundled()
    tags = tagger.tag(texts)
    return tags, {**tagger.info(), "tagged": {g: tags.count(g) for g in sorted(set(tags))}}


def _learner_view(cfg: SimConfig):
    """The task's template, and how a text looks to the learner: inside the template's instruction with
    --instruction (as the live loop does with learner.instruction), else bare."""
    from loop.rounds import learner_input
    from loop.teacher import load_template

    template = load_template(cfg.task)
    instruction = template.instruction if cfg.instruction else ""
    return template, lambda text: learner_input(instruction, text)


def _failure_rule(cfg: SimConfig) -> str:
    """When a test output counts as a failure, in words for the report."""
    if cfg.task == "counter_narration":
        return (f"judged offensive, mostly copied (half or more of its word 3-grams occur in the input), off-topic"
                f" (embedding cosine with the input under {cfg.relevance_threshold:g}) or degenerate; chrF against"
                " one human reply is reported but decides nothing (two human replies to the same text score about"
                " 25 chrF against each other)")
    return f"judged offensive, or sentence chrF under {cfg.chrf_threshold:g} against its best reference"


def decide(final_items: dict[str, list[dict]], groups: list[object], *, ranked_by_chrf: bool = True) -> dict:
    """The paired tests of the last round (loop/stats.py): stratified against every other strategy, and
    each strategy's error-ratio variance minus its noise floor. No comparisons without stratified and
    another; none on chrF where it does not measure the task (counter-narration)."""
    from loop import stats

    per_item = {s: _per_item(seeds, ranked_by_chrf) for s, seeds in final_items.items()}
    out: dict = {"excess_variance": stats.excess_variance(per_item, groups) if per_item else {}}
    if "stratified" in per_item and len(per_item) > 1:
        out["comparisons"] = stats.compare(per_item, groups)
    out["method"] = {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "seeds": len(next(iter(final_items.values()), [])),
                     "pooling": "per-item values averaged over seeds, items resampled (paired by item)"}
    return out


def _per_item(seeds: list[dict], ranked_by_chrf: bool) -> dict[str, np.ndarray]:
    """One strategy's per-item values of each seed's last round as (seeds, items) arrays, for loop/stats.py."""
    return {k: np.array([seed[k] for seed in seeds], dtype=float) for k in seeds[0] if ranked_by_chrf or k != "chrf"}


def _k_sweep(cfg: SimConfig, pool_vectors: np.ndarray, final_items: dict[str, list[dict]], groups: list[object],
             ranked_by_chrf: bool, stratified_at: Callable[[int, np.ndarray, int], dict]) -> dict | None:
    """Stratified selection at every K of `k_sweep` (clusters refitted on the pool; the main K's runs are
    reused), each against random with the paired tests of loop/stats.py, Holm-corrected over every K and
    metric together. `stratified_at(seed, clusters, k)` runs one seed and returns its last per-item values."""
    if not cfg.k_sweep:
        return None
    from loop import stats
    from loop.cluster import fit as fit_clusters

    runs = {}
    for k in dict.fromkeys(cfg.k_sweep):
        clusters = fit_clusters(pool_vectors, k=k, seed=cfg.split_seed)[0] if k != cfg.k else None
        runs[k] = (final_items["stratified"] if clusters is None
                   else [stratified_at(seed, clusters, k) for seed in cfg.seeds])
    arms = {f"K={k}": _per_item(seeds, ranked_by_chrf) for k, seeds in runs.items()}
    arms["random"] = _per_item(final_items["random"], ranked_by_chrf)
    values: dict[str, dict[str, float]] = {}
    for arm, items in arms.items():
        ones = np.ones((1, len(groups)))
        values[arm] = {name: float(stats.statistic_of(name, groups)(np.atleast_2d(items[key]), ones)[0])
                       for name, key, _, _ in stats.COMPARED if key in items}
    comparisons = []
    for k in runs:
        for c in stats.compare({f"K={k}": arms[f"K={k}"], "random": arms["random"]}, groups, reference=f"K={k}"):
            comparisons.append({**c, "k": k})
    return {"ks": list(runs), "main_k": cfg.k, "values": values, "comparisons": stats.holm_verdicts(comparisons),
            "metrics": {name: label for name, _, label, _ in stats.COMPARED}}


class GroupTest:
    """Scores learners on the --group-test texts, whose groups are real (not the clusters being sampled):
    an output fails when the judge finds it offensive or it is degenerate (there is no reference). Keeps
    each (strategy, seed)'s per-item values for the paired tests and its per-group failure rates."""

    def __init__(self, cfg: SimConfig, rows: list[dict], gen: Callable, seen: Callable, judge: Callable) -> None:
        self.cfg, self.gen, self.judge = cfg, gen, judge
        self.texts = [r["text"] for r in rows]
        self.inputs = [seen(t) for t in self.texts]
        self.groups = [r["subgroups"] for r in rows]
        self.items: dict[str, list[dict]] = {}
        self.values: dict[str, list[dict]] = {}

    def score(self, strategy: str, seed: int | None, model: str) -> dict:
        """Generate with `model`, judge, and keep the per-item values under `strategy`."""
        outputs = self.gen(model, self.inputs)
        offensive = [bool(j >= self.cfg.judge_threshold) for j in self.judge(outputs)]
        loops = metrics.degenerate(outputs)
        failed = [o or d for o, d in zip(offensive, loops, strict=True)]
        rates = metrics.group_rates(failed, self.groups)
        value = {"seed": seed, "failure_rate": float(np.mean(failed)), "offensive_share": float(np.mean(offensive)),
                 "degenerate_share": float(np.mean(loops)), "error_ratio_variance": metrics.error_ratio_variance(rates),
                 "variance_floor": metrics.variance_floor(rates), "groups": rates}
        self.values.setdefault(strategy, []).append(value)
        self.items.setdefault(strategy, []).append({"failed": failed, "offensive": offensive, "degenerate": loops})
        return value

    def result(self) -> dict:
        """What the report needs: the file, its groups, every strategy's values and the paired tests."""
        strategies = {s: v for s, v in self.items.items() if s != "starter"}
        return {"file": self.cfg.group_test, "where": self.cfg.group_test_where, "texts": len(self.texts),
                "groups": metrics.group_rates([False] * len(self.groups), self.groups),
                "input_offensive_share": metrics.offensive_share(self.judge(self.texts), self.cfg.judge_threshold),
                "values": self.values, "tests": decide(strategies, self.groups, ranked_by_chrf=False)}


def _second_learner(cfg: SimConfig, pool: list[dict], test: list[dict], acquired: dict[tuple[str, int], list[int]],
                    pool_in: list[str], pool_ref: list[str], test_in: list[str], gen: Callable, evaluate: Callable,
                    last_items: list[dict], tmp: Path, groups: list[object], ranked_by_chrf: bool) -> dict:
    """The paper's claim that the acquired data helps a model outside the loop: a second learner (another
    size, or any checkpoint) fine-tuned once from its start on each (strategy, seed)'s accepted pairs, exactly as
    the loop's learner is trained, evaluated on the same test split, with the same paired tests."""
    from tqdm.auto import tqdm

    from loop import learner

    built = cfg.second_built()
    if built is None:
        start, info = cfg.second_learner, {"path": cfg.second_learner, "built": False}
    else:
        arch, width = built
        path, info = build_starter(replace(cfg, starter_width=width, starter_arch=arch), seed_split(cfg, pool, test),
                                   pool)
        start = str(path)
    start_metrics = evaluate(gen(start, test_in))
    values: dict[str, list[dict]] = {}
    items: dict[str, list[dict]] = {}
    for (strategy, seed), rows in tqdm(acquired.items(), desc="second learner", disable=not cfg.progress):
        model = start  # a run that accepted nothing leaves the second learner as it started
        if rows:
            model = str(tmp / f"second-{strategy}-{seed}")
            _fine_tune(cfg, start, [(pool_in[i], pool_ref[i]) for i in rows], model, seed=seed * 1000 + cfg.rounds)
        got = evaluate(gen(model, test_in))
        learner.clear_cache()
        values.setdefault(strategy, []).append({"seed": seed, "pairs": len(rows), **got})
        items.setdefault(strategy, []).append(last_items[0])
    return {"learner": info, "start": start_metrics, "values": values,
            "tests": decide(items, groups, ranked_by_chrf=ranked_by_chrf)}


def _fine_tune(cfg: SimConfig, start: str, pairs: list[tuple[str, str]], out: str | Path, *, seed: int) -> dict:
    """learner.fine_tune with the simulation's schedule (epochs, lr, batch, optimizer, warm-up, decay)."""
    from loop import learner

    return learner.fine_tune(start, pairs, out, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                             max_target_tokens=cfg.max_new_tokens, optimizer=cfg.optimizer, warmup=cfg.warmup,
                             weight_decay=cfg.weight_decay)


def _constant_reply(references: list[str]) -> str:
    """The constant baseline's reply: the most common reference (ties: the shortest, then the first)."""
    counts: dict[str, int] = {}
    for ref in references:
        counts[ref] = counts.get(ref, 0) + 1
    return min(counts, key=lambda r: (-counts[r], len(r)))


def _one_run(cfg: SimConfig, strategy: str, seed: int, rejected: np.ndarray, pool_text: list[str],
             pool_ref: list[str], pool_cluster: np.ndarray, starter_pool: list[str], test_text: list[str],
             gen: Callable, evaluate: Callable, r_score: Callable, ckpt: Path,
             bar) -> tuple[list[dict], list[int], str]:
    """One strategy with one seed: `rounds` rounds of score, select, verify, retrain, evaluate; (one row per
    round, the pool rows accepted over all rounds, the last learner).

    With `lookahead` L a round is scored by the learner trained L rounds before the newest, as the live
    loop selects a look-ahead batch while the round before it is still verified (and not yet trained on)."""
    from loop import learner

    rng = np.random.default_rng(seed)
    available = np.ones(len(pool_text), dtype=bool)
    accepted: list[int] = []
    model = cfg.learner
    learners = [model]  # the learner after each round, the starter first
    rows = []
    for rnd in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        cand = np.flatnonzero(available)
        if len(cand) == 0:
            break
        if cfg.candidates_per_cluster:  # as select.candidates_per_cluster: a seeded sample of M per cluster
            cand = cand[sample_per_cluster(pool_cluster[cand], cfg.candidates_per_cluster,
                                           np.random.default_rng([seed, rnd, cfg.candidates_per_cluster]))]
        texts = [pool_text[i] for i in cand]
        selected_by = max(0, len(learners) - 1 - cfg.lookahead)  # the round whose learner scores (0: the starter)
        scorer = learners[selected_by]
        interim = [starter_pool[i] for i in cand] if scorer == cfg.learner else gen(scorer, texts)
        scores = np.asarray(r_score(interim))
        picked = cand[STRATEGIES[strategy](scores, pool_cluster[cand], cfg.budget, rng)]
        available[picked] = False
        ok = [int(i) for i in picked if not rejected[i]]
        accepted.extend(ok)
        fit = {}
        if accepted:
            start = cfg.learner if cfg.regime == "retrain" else model
            # with a look-ahead the learners it still selects with stay on disk: L + 1 directories in turn
            out = ckpt if cfg.lookahead == 0 else ckpt.with_name(f"{ckpt.name}-{rnd % (cfg.lookahead + 1)}")
            fit = _fine_tune(cfg, start, [(pool_text[i], pool_ref[i]) for i in accepted], out, seed=seed * 1000 + rnd)
            model = str(out)
        learners.append(model)
        row = {"strategy": strategy, "seed": seed, "round": rnd, "labeled": len(accepted), "selected": len(picked),
               "accepted": len(ok), "selected_by": selected_by,
               "mean_r_selected": float(scores[np.isin(cand, picked)].mean()),
               "clusters_selected": {str(c): int(n) for c, n in zip(*np.unique(pool_cluster[picked],
                                                                               return_counts=True), strict=True)},
               "train_loss": fit.get("train_loss"), **evaluate(gen(model, test_text))}
        row["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(row)
        bar.update(1)
        bar.set_postfix(strategy=strategy, seed=seed, chrf=f"{row['chrf']:.1f}")
    if model != cfg.learner:
        learner.clear_cache()  # this run's checkpoints are done with; free their memory
    return rows, accepted, model
