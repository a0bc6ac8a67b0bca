"""The round state machine, persisted in the ledger: selected -> distilled -> imported -> verifying
-> training -> done; with a look-ahead, the next round is selected, distilled and imported while one
is verified.

`advance(ctx)` performs exactly one step from whatever state the ledger holds and returns what it
did, so a crash at any point resumes from the last completed step: selection is one transaction,
teacher outputs are cached, import skips tasks Label Studio already has (each task carries a
`labelloop_key`), verifications are upserted by annotation id, and a checkpoint is registered only
after it is completely written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from loop import cluster as cluster_mod
from loop import engine, teacher, team
from loop.config import Settings
from loop.errors import ImportOutcomeUnknown, LabelloopError
from loop.ledger import Ledger
from loop.scorer import build_one, build_scorer, combine, signature_one
from loop.scorer import signature as scorer_signature
from loop.select import STRATEGIES, sample_per_cluster
from loop.vocab import BASE_VERSION, RANDOM_STRATEGIES, version_name, version_number

if TYPE_CHECKING:  # the type only: loop.rounds loads without the SDK
    from loop.studio import Studio

log = logging.getLogger(__name__)

StepKind = Literal["moved", "waiting", "idle", "error", "stopped"]


@dataclass(frozen=True)
class Step:
    """What one call of `advance` did: a step of the state machine (`moved`), nothing until annotators
    finish (`waiting`), nothing left to do (`idle`), a failure the scheduler recorded and will retry
    (`error`), or one retrying cannot fix (`stopped`: the run ends with it).
    `message` is the line for people; callers branch on `kind`, never on the text."""

    kind: StepKind
    message: str
    round_id: int | None = None
    state: str | None = None  # the round's state after the step

    @property
    def settled(self) -> bool:
        """True when the loop cannot go on before something outside changes (annotators, the pool)."""
        return self.kind in ("waiting", "idle", "error", "stopped")

    def __str__(self) -> str:
        return self.message


@dataclass
class Context:
    """What one process needs to advance rounds: settings, the ledger and a Label Studio client."""

    settings: Settings
    ledger: Ledger
    studio: Studio | None = None
    project_id: int | None = None
    progress: bool = False


def task_key(round_id: int, pool_id: int) -> str:
    """The idempotency key every imported task carries in its data."""
    return f"r{round_id}-p{pool_id}"


def parse_task_key(key: str) -> tuple[int, int] | None:
    """(round_id, pool_id) from a task key, or None if it is not one of ours."""
    try:
        r, p = key.split("-")
        if r[0] == "r" and p[0] == "p":
            return int(r[1:]), int(p[1:])
    except (ValueError, IndexError, AttributeError):
        pass
    return None


# --- the learner's versions ------------------------------------------------------------------------
def current_learner(ctx: Context) -> dict:
    """The current learner version; registers the configured base model as v0 on first use."""
    current = ctx.ledger.find_current_model()
    if current is None:
        ctx.ledger.add_model_version(
            BASE_VERSION, path=ctx.settings.learner.base_model, parent=None, round_id=None, pairs=0, metrics={}
        )
        current = ctx.ledger.find_current_model()
    return current


def _next_version(ledger: Ledger) -> str:
    return version_name(max((version_number(v["version"]) for v in ledger.model_versions()), default=0) + 1)


# --- steps -----------------------------------------------------------------------------------------
def prepare_pool(ctx: Context) -> dict[int, int]:
    """Embed what has no embedding yet and place it in the clustering; pool_id -> cluster.

    The pool is clustered once; items ingested later join their nearest stored centroid, so cluster ids
    keep their meaning across rounds (statistics add them up). Only a change of embedding model, K or
    seed fits a new clustering version, its ids matched to the previous one's (`recluster` on request).
    """
    s, ledger = ctx.settings, ctx.ledger
    missing = ledger.ids_without_embedding(s.embed.model)
    if missing:
        log.info("embedding %d pool items with %s (%s engine)", len(missing), s.embed.model, s.engine.kind)
        engine.embed_pool(s, ledger, missing, progress=ctx.progress)
    identity = clustering_identity(s)
    current = ledger.find_clustering_version()
    if current is None or _settings_part(current["identity"]) != identity:
        why = "first clustering" if current is None else f"settings changed from {current['identity']}"
        recluster(ctx, reason=why)
        return ledger.clusters()
    ids, matrix = ledger.embeddings(s.embed.model)
    placed = ledger.clusters()
    if current["centroids"] is None:  # stored before clusterings kept centroids: take its means, keep its ids
        known = [n for n, i in enumerate(ids) if i in placed]
        centroids = cluster_mod.centroids_of(matrix[known], np.array([placed[ids[n]] for n in known]))
        ledger.set_centroids(current["version"], centroids)
        current["centroids"] = centroids
    new = [n for n, i in enumerate(ids) if i not in placed]
    if new:
        labels = cluster_mod.assign(matrix[new], current["centroids"])
        ledger.add_to_clusters([ids[n] for n in new], labels)
        log.info("%d new pool items joined their nearest clusters (clustering version %d)", len(new),
                 current["version"])
    return ledger.clusters()


def clustering_identity(settings: Settings) -> str:
    """What a clustering depends on: the embedding model, K and the seed."""
    return f"{settings.embed.model}|k={settings.cluster.k}|seed={settings.cluster.seed}"


def _settings_part(identity: str) -> str:
    """The identity without the pool size that clusterings stored before versions carried (`|n=...`)."""
    return identity.split("|n=", 1)[0]


def recluster(ctx: Context, *, reason: str = "asked for", dry_run: bool = False) -> dict[str, Any]:
    """Fit a new clustering version on the whole pool, its ids matched to the current version's centroids
    so that a region keeps its id where it still exists; counts of items that changed cluster."""
    s, ledger = ctx.settings, ctx.ledger
    ids, matrix = ledger.embeddings(s.embed.model)
    if not ids:
        raise LabelloopError("no embedded pool items to cluster; ingest a pool and run a round (or init) first")
    log.info("clustering %d items into %d groups (%s)", len(ids), s.cluster.k, reason)
    labels, centroids = cluster_mod.fit(matrix, k=s.cluster.k, seed=s.cluster.seed)
    current = ledger.find_clustering_version()
    before = ledger.clusters()
    previous = current["centroids"] if current is not None else None
    if previous is not None and previous.shape[1] == centroids.shape[1]:
        mapping = cluster_mod.align(centroids, previous)  # fitted id -> the id that region had before
        labels = mapping[labels]
        aligned = np.full((int(mapping.max()) + 1, centroids.shape[1]), np.nan, np.float32)
        aligned[mapping] = centroids
        centroids = aligned
    moved = sum(before.get(i) != int(c) for i, c in zip(ids, labels, strict=True)) if before else len(ids)
    version = None
    if not dry_run:
        version = ledger.put_clusters(clustering_identity(s), ids, labels, centroids=centroids, reason=reason)
    return {"version": version, "items": len(ids), "moved": moved, "k": int(len(set(labels.tolist())))}
def learner_instruction(settings: Settings) -> str:
    """The instruction the learner sees around each input (the task template's `instruction:`), or ""
    when `learner.instruction` is off; generation, training and dev loss all go through it."""
    if not settings.learner.instruction:
        return ""
    return teacher.load_template(settings.task, settings.teacher.template).instruction


def learner_input(instruction: str, text: str) -> str:
    """A pool text as the learner sees it: the instruction with the text in place of `{text}`, or the bare
    text when there is none (replace, not format: a text may hold braces)."""
    return instruction.replace("{text}", text) if instruction else text


def score_key(settings: Settings, version: str) -> tuple[str, str]:
    """(output key, R's signature): where a learner version's interim outputs and their scores are
    stored. ct2-int8 outputs can differ from float32 ones and a new instruction changes every output,
    so both are part of the key. Whoever reads scores (selection, a top-up) must use this pair."""
    key = f"{version}@int8" if settings.learner.runtime == "ct2-int8" else version
    instruction = learner_instruction(settings)
    if instruction:
        key += "|" + hashlib.sha1(instruction.encode("utf-8")).hexdigest()[:8]
    return key, scorer_signature(settings.scorer)


@dataclass(frozen=True)
class Attribute:
    """One attribute of a several-attribute R over the candidates: its raw scores and its weighted,
    normalised contribution to each candidate's informativeness (aligned with the candidate ids)."""

    signature: str
    weight: float
    raw: np.ndarray
    contribution: np.ndarray


def score_candidates(ctx: Context, ids: list[int], model: dict) -> dict[int, tuple[str, float]]:
    """Interim outputs G(x) and informativeness R(G(x)) for `ids`, computing only what is not stored.

    Stored rows are keyed by (item, learner version, R's signature): a new version regenerates, a new R
    (kind, model, label, weights, probe file) re-scores the stored outputs without regenerating them.
    Pool texts never change under an id (ingest deduplicates and never updates). ct2-int8 outputs can
    differ from float32 ones, and the learner's instruction changes every output: see `score_key`.
    With several attributes each is scored and stored on its own, then normalised over `ids` and
    weighted (scorer.normalise), so the informativeness depends on the candidates scored together."""
    return _score_candidates(ctx, ids, model)[0]


def _score_candidates(ctx: Context, ids: list[int], model: dict) -> tuple[dict, list[Attribute]]:
    s, ledger = ctx.settings, ctx.ledger
    key, signature = score_key(s, model["version"])
    if not s.scorer.attributes or s.scorer.normalise == "none":
        return _score_stored(ctx, ids, model, key, signature, partial(build_scorer, s.scorer)), []
    attributes = []
    for a in s.scorer.attributes:
        one = signature_one(a.kind, a.model, a.label)
        got = _score_stored(ctx, ids, model, key, one, partial(build_one, a.kind, a.model, a.label))
        attributes.append((one, a.weight, np.array([got[i][1] for i in ids])))
    total, parts = combine([raw for _, _, raw in attributes], [w for _, w, _ in attributes], s.scorer.normalise)
    interims = [got[i][0] for i in ids]
    ledger.put_scores(key, signature, ids, interims, total.tolist())  # as of this selection, for its top-ups
    return ({i: (y, float(t)) for i, y, t in zip(ids, interims, total, strict=True)},
            [Attribute(sig, w, raw, part) for (sig, w, raw), part in zip(attributes, parts, strict=True)])


def _score_stored(ctx: Context, ids: list[int], model: dict, key: str, signature: str,
                  make_scorer: engine.ScorerFactory) -> dict:
    """(interim, score) per id under one R signature, generating and scoring only what is not stored; the
    engine (`engine.kind`) runs R (built by `make_scorer`) and the learner where it needs them."""
    s, ledger = ctx.settings, ctx.ledger
    todo = ledger.ids_without_score(key, signature, ids)
    if todo:
        known = ledger.interims(key, todo)  # this version's outputs stored under another R
        instruction = learner_instruction(s)
        inputs = {it["id"]: learner_input(instruction, it["text"]) for it in ledger.pool_items(todo)
                  if it["id"] not in known}
        log.info("learner %s writes interim outputs for %d items (%s) and R (%s) scores %d (%s engine)", key,
                 len(inputs), s.learner.runtime, signature, len(todo), s.engine.kind)
        engine.score_pool(s, ledger, key=key, signature=signature, model=model["path"], inputs=inputs,
                          stored=known, make_scorer=make_scorer, progress=ctx.progress)
    stored = ledger.scores(key, signature)
    return {i: stored[i] for i in ids}


def capped_candidates(ctx: Context, candidates: list[int], clusters: dict[int, int], round_no: int) -> list[int]:
    """The candidates round `round_no` scores: all of them, or with `select.candidates_per_cluster` = M a
    seeded random sample of M per cluster. The sample is stored in the ledger before any scoring, so a
    selection that crashes while scoring resumes on the same sample (minus items sent since)."""
    s, ledger = ctx.settings, ctx.ledger
    m = s.select.candidates_per_cluster
    if m is None:
        return candidates
    key = f"round:{round_no}:candidates"
    stored = json.loads(ledger.find_meta(key) or "null")
    if stored is not None and stored["m"] == m and stored["seed"] == s.select.seed:
        unsent = set(candidates)
        return [i for i in stored["ids"] if i in unsent]
    rng = np.random.default_rng([s.select.seed, round_no, m])  # not selection's stream: that one picks the batch
    picked = sample_per_cluster(np.array([clusters[i] for i in candidates]), m, rng)
    sample = [candidates[p] for p in picked]
    ledger.set_meta(key, json.dumps({"m": m, "seed": s.select.seed, "of": len(candidates), "ids": sample}))
    log.info("round %d: scoring a sample of %d of %d unsent items (at most %d per cluster)", round_no,
             len(sample), len(candidates), m)
    return sample


def select_round(ctx: Context) -> int | None:
    """Score every unsent item (or a sample: `capped_candidates`) with the current learner and open a round
    with the selected batch."""
    s, ledger = ctx.settings, ctx.ledger
    clusters = prepare_pool(ctx)
    candidates = ledger.unsent_pool_ids()
    if not candidates:
        return None
    model = current_learner(ctx)
    round_no = len(ledger.rounds()) + 1
    candidates = capped_candidates(ctx, candidates, clusters, round_no)
    scored, attributes = _score_candidates(ctx, candidates, model)
    scores = np.array([scored[i][1] for i in candidates])
    labels = np.array([clusters[i] for i in candidates])
    rng = np.random.default_rng([s.select.seed, round_no])
    picked = STRATEGIES[s.select.strategy](scores, labels, s.select.budget, rng)
    items = [
        {"pool_id": candidates[p], "cluster": int(labels[p]), "score": float(scores[p]),
         "interim": scored[candidates[p]][0]}
        for p in picked
    ]
    clustering = ledger.find_clustering_version()
    round_id = ledger.create_round(
        strategy=s.select.strategy, budget=s.select.budget, learner_version=model["version"], items=items,
        clustering=clustering["version"] if clustering else None,
    )
    if attributes and len(picked):  # what each attribute of R contributed to this batch (labelloop status)
        total = float(scores[picked].mean())
        ledger.set_meta(f"round:{round_id}:r_attributes", json.dumps([
            {"attribute": a.signature, "weight": a.weight, "mean_score": float(a.raw[picked].mean()),
             "mean_contribution": float(a.contribution[picked].mean()),
             "share": float(a.contribution[picked].mean()) / total if total else None} for a in attributes]))
    log.info("round %d: selected %d items (%s, budget %d)", round_id, len(items), s.select.strategy, s.select.budget)
    return round_id


def distill_round(ctx: Context, round_id: int, *, max_top_ups: int = 3) -> dict:
    """Teacher outputs for the round's batch (cached ones cost nothing; every attempt is accounted).

    An item the teacher fails on keeps its reason and is never imported; with `teacher.top_up` the
    batch is topped up from the same cluster (the next unsent item by score, or at random for the
    random baselines) until every cluster has as many drafts as it was given, or the cluster runs dry.
    Safe to re-run: replaced items are not asked again, and top-ups are counted per cluster.
    """
    s, ledger = ctx.settings, ctx.ledger
    template = teacher.load_template(s.task, s.teacher.template)
    t = teacher.from_settings(s, progress=ctx.progress)
    rnd = ledger.get_round(round_id)
    replaced = set(ledger.topups(round_id).values())
    todo = [b for b in ledger.batch(round_id) if b["draft"] is None and b["pool_id"] not in replaced]
    for step in range(max_top_ups + 1):
        if todo:
            ledger.set_drafts(round_id, teacher.distill(ledger, t, template, todo, round_id=round_id))
        if not s.teacher.top_up or step == max_top_ups:
            break
        batch, topups = ledger.batch(round_id), ledger.topups(round_id)
        replaced = set(topups.values())
        need: dict[int, int] = {}
        for b in batch:  # per cluster: items originally given - items with a draft
            need[b["cluster"]] = need.get(b["cluster"], 0) + (b["pool_id"] not in topups) - bool(b["draft"])
        if not any(n > 0 for n in need.values()):
            break
        clusters = ledger.clusters()
        scored = ledger.scores(*score_key(s, rnd["learner_version"]))
        unsent = [i for i in ledger.unsent_pool_ids() if i in scored and i in clusters]
        rng = np.random.default_rng([s.select.seed, round_id, step])
        new = []
        for c, n in need.items():
            failed = [b["pool_id"] for b in batch if b["cluster"] == c and b["teacher_error"]
                      and b["pool_id"] not in replaced]
            pool = [i for i in unsent if clusters[i] == c]
            if s.select.strategy in RANDOM_STRATEGIES:
                pool = [pool[j] for j in rng.permutation(len(pool))]
            else:
                pool.sort(key=lambda i: -scored[i][1])
            new += [{"pool_id": p, "cluster": c, "score": float(scored[p][1]), "interim": scored[p][0],
                     "replaces": f} for p, f in zip(pool, failed[: max(n, 0)], strict=False)]
        if not new:
            break
        ledger.add_topup_items(round_id, new)
        log.info("round %d: %d failed items topped up from their clusters", round_id, len(new))
        added = {it["pool_id"] for it in new}
        todo = [b for b in ledger.batch(round_id) if b["pool_id"] in added]
    ledger.set_meta(f"round:{round_id}:model_version", teacher.provenance(t, template))
    progress = ledger.round_progress(round_id)
    usage = ledger.teacher_usage(round_id)
    return {"distilled": progress["distilled"], "failed": progress["failed"],
            "topped_up": len(ledger.topups(round_id)), "cost": usage["cost"]}


# An import whose answer never came may still be committed by Label Studio: its SQLite-lock middleware
# retries a request 15 times, 1 s x 1.5^n apart (about 875 s), past the client's 600 s import timeout.
IMPORT_SETTLE_S = 960.0  # after sending such an import, how long its keys are awaited before importing again
IMPORT_WAIT_S = 60.0  # how long one tick polls for them before handing back to the scheduler
IMPORT_POLL_S = 2.0  # between two looks


def _unsettled_meta(round_id: int) -> str:
    return f"round:{round_id}:import_unsettled"


def _await_unsettled_import(ctx: Context, round_id: int, keys: set[str]) -> None:
    """Before importing after an import whose answer never came: poll until its keys are all in the
    project (up to IMPORT_WAIT_S in this tick); raise ImportOutcomeUnknown, importing nothing, while
    Label Studio may still commit it (IMPORT_SETTLE_S after it was sent); go on once it cannot."""

    marker = ctx.ledger.find_meta(_unsettled_meta(round_id))
    if marker is None or not keys or ctx.studio is None or ctx.project_id is None:
        return
    project, sent = marker.split("@")
    if int(project) != ctx.project_id:  # sent to a project no longer in use: nothing to await there
        return
    settle_by = float(sent) + IMPORT_SETTLE_S
    wait_until = min(settle_by, time.time() + IMPORT_WAIT_S)
    while True:
        missing = keys - set(ctx.studio.existing_keys(ctx.project_id))
        if not missing:
            log.info("round %d: the import whose answer was lost has been committed", round_id)
            return
        now = time.time()
        if now >= settle_by:
            log.warning("round %d: %d tasks of an import whose answer was lost never appeared; importing them",
                        round_id, len(missing))
            return
        if now >= wait_until:
            until = time.strftime("%H:%M:%S", time.localtime(settle_by))
            raise ImportOutcomeUnknown(
                f"import round {round_id} into project {ctx.project_id}", None,
                f"awaiting an earlier import whose answer was lost: {len(missing)} of its {len(keys)} tasks are not"
                f" in the project yet, and Label Studio may still commit it until {until}; nothing is imported"
                " again before")
        time.sleep(min(IMPORT_POLL_S, wait_until - now))  # poll interval; the deadline is checked above


def import_round(ctx: Context, round_id: int) -> int:
    """Import the round's distilled items into Label Studio with their drafts as predictions.

    Safe to repeat: `import_batch` skips keys the project has, deletes duplicate copies of a key and
    re-attaches missing predictions, so every item ends with one task that shows its draft. An import
    whose answer never came is remembered in the ledger, and the next attempt awaits its keys before
    importing anything (`_await_unsettled_import`): Label Studio may still commit it.
    """

    if ctx.studio is None or ctx.project_id is None:
        raise LabelloopError("no Label Studio project connected")
    batch = [b for b in ctx.ledger.batch(round_id) if b["draft"]]
    model_version = ctx.ledger.find_meta(f"round:{round_id}:model_version", "teacher")
    learner_version = ctx.ledger.get_round(round_id)["learner_version"]
    # subgroups and learner version travel with the task: a label config can show the groups ($subgroup,
    # all of them joined; "" for none, since Label Studio refuses a null where a config shows the field),
    # and an export read straight from Label Studio keeps its provenance
    groups = ctx.ledger.memberships([b["pool_id"] for b in batch])
    items = [
        {"key": task_key(round_id, b["pool_id"]), "text": b["text"], "draft": b["draft"], "score": b["score"],
         "meta": {"round": round_id, "cluster": b["cluster"], "learner_version": learner_version,
                  "subgroup": ", ".join(groups.get(b["pool_id"], [])), "subgroups": groups.get(b["pool_id"], [])}}
        for b in batch
    ]
    ctx.ledger.set_round_project(round_id, ctx.project_id)
    _await_unsettled_import(ctx, round_id, {it["key"] for it in items})
    try:
        ids = ctx.studio.import_batch(ctx.project_id, items, model_version=model_version)
    except ImportOutcomeUnknown:
        ctx.ledger.set_meta(_unsettled_meta(round_id), f"{ctx.project_id}@{time.time()}")
        raise
    ctx.ledger.set_meta(_unsettled_meta(round_id), None)
    ctx.ledger.set_task_ids(round_id, {b["pool_id"]: ids[task_key(round_id, b["pool_id"])] for b in batch})
    return len(ids)


def _withdraw_confirmed(ledger: Ledger, studio: Studio, project_id: int, present: set[int],
                        task_ids: list[int] | None) -> int:
    """Withdraw the verifications of the project's rounds (on `task_ids` if given) missing from a
    listing that found `present`, once Label Studio confirms their annotations are gone; returns how many."""
    missing = ledger.absent_verifications(present, task_ids, project_id=project_id)
    if not missing:
        return 0
    gone = studio.gone_annotations(missing)
    kept = sorted(set(missing) - gone)
    if kept:
        log.warning("%d annotations missing from the listing of project %s still exist in Label Studio (an"
                    " incomplete listing?); their verifications stay: %s", len(kept), project_id, kept[:20])
    return ledger.withdraw_annotations(gone)


def _sync_skips(ctx: Context, task_ids: list[int] | None) -> int:
    """Record the skips Label Studio holds (of `task_ids`, or all) and withdraw those it confirms are no
    skip any more (deleted, or re-submitted as a verdict); returns the changes."""
    ledger, studio, project_id = ctx.ledger, ctx.studio, ctx.project_id
    skips = studio.skipped_annotations(project_id, task_ids)
    rows = []
    for k in skips:
        parsed = parse_task_key(k.key)
        if parsed is not None:
            rows.append({"annotation_id": k.annotation_id, "task_id": k.task_id, "round_id": parsed[0],
                         "pool_id": parsed[1], "annotator": k.annotator, "created_at": k.created_at,
                         "updated_at": k.updated_at})
    changed = ledger.record_skips(rows)
    missing = ledger.absent_skips({k.annotation_id for k in skips}, task_ids, project_id=project_id)
    if missing:
        changed += ledger.withdraw_skips(studio.gone_skips(missing))
    return changed


def _quota(ctx: Context) -> int:
    """How many people each task wants (Label Studio's overlap)."""
    return ctx.settings.team.overlap


def _deadline(ctx: Context, rnd: dict) -> datetime | None:
    """When a verifying round closes with what is verified (None: it waits for every task). Set once, from
    `team.deadline_hours`, as the round starts waiting for annotators; `labelloop deadline` moves or clears it."""
    hours = ctx.settings.team.deadline_hours
    if rnd["state"] == "imported" and rnd["deadline_at"] is None and hours is not None:
        at = (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat(timespec="seconds")
        ctx.ledger.set_round_deadline(rnd["id"], at)
        return datetime.fromisoformat(at)
    return datetime.fromisoformat(rnd["deadline_at"]) if rnd["deadline_at"] else None


def _record_team(ctx: Context) -> None:
    """Record the team's rule and where Label Studio is, for the readers that have only the ledger (status,
    the dashboard, the export): they decide tasks as the loop does and link to the tasks to adjudicate."""
    ctx.ledger.set_team_rule(ctx.settings.team.overlap, ctx.settings.team.adjudicators)
    if ctx.studio is not None and ctx.project_id is not None:
        where = f"{ctx.studio.url}/projects/{ctx.project_id}"
        if ctx.ledger.find_meta("studio_project_url") != where:
            ctx.ledger.set_meta("studio_project_url", where)


def close_round(ctx: Context, round_id: int, reason: str) -> str:
    """Move a verifying round to training, recording why (`complete` or `deadline`), and apply the skip
    policy to the items every assigned annotator skipped; returns the line for people."""
    ledger, s = ctx.ledger, ctx.settings
    skipped = team.skipped_items(ledger.item_tallies(round_id))
    with ledger.transaction():
        if s.team.skip_policy == "return":
            ledger.return_to_pool(round_id, skipped)
        ledger.set_round_state(round_id, "training", expect="verifying", closed_reason=reason)
    counts = team.tally(ledger.item_tallies(round_id), _quota(ctx))
    policy = "returned to the pool" if s.team.skip_policy == "return" else "retired"
    return (f"round {round_id}: closed ({reason}), {counts['verified']} verified, {counts['skipped']} skipped"
            f" ({policy}), {counts['open']} still open")


def sync_verifications(ctx: Context, *, full: bool = True) -> int:
    """Bring the ledger's verifications in line with Label Studio (idempotent); returns changes.

    `full` reads every annotated task (the periodic reconciliation that catches lost webhooks and
    deletions); otherwise only the tasks named by pending webhook events are read. A verification is
    withdrawn only if its round was imported into the project read (another project's, say one Label
    Studio lost, is not this listing's to judge) and Label Studio confirms its annotation is gone: a
    listing that misses it may be incomplete, so the absence is only a reason to ask.
    """
    if ctx.studio is None or ctx.project_id is None:
        return 0
    ledger = ctx.ledger
    up_to, task_ids = ledger.pending_event_tasks()
    if full:
        annotations, scope = ctx.studio.completed_annotations(ctx.project_id), None
    elif task_ids:
        annotations, scope = ctx.studio.annotations_for_tasks(ctx.project_id, task_ids), task_ids
    else:
        ledger.mark_events_processed(up_to)
        return 0
    rows = []
    for ann in annotations:
        parsed = parse_task_key(ann.key)
        if parsed is None:
            continue
        round_id, pool_id = parsed
        rows.append(
            {"annotation_id": ann.annotation_id, "task_id": ann.task_id, "round_id": round_id, "pool_id": pool_id,
             "verdict": ann.verdict, "target": None if ann.verdict == "reject" else ann.text, "draft": ann.draft,
             "comment": ann.comment, "annotator": ann.annotator, "updated_at": ann.updated_at,
             "lead_time": ann.lead_time, "created_at": ann.created_at}
        )
    changed = ledger.record_verifications(rows)
    changed += _withdraw_confirmed(ledger, ctx.studio, ctx.project_id, {a.annotation_id for a in annotations}, scope)
    changed += _sync_skips(ctx, scope)
    ledger.mark_events_processed(up_to)
    if full:
        ledger.set_meta("last_full_sync", str(time.time()))
    return changed


def _full_sync_due(ctx: Context) -> bool:
    last = ctx.ledger.find_meta("last_full_sync")
    return last is None or time.time() - float(last) >= ctx.settings.scheduler.reconcile_seconds


def train_round(ctx: Context, round_id: int) -> str:
    """Fine-tune on the verified pairs outside the dev split, from the base model (`learner.regime`
    "retrain", the paper's) or from the version in use ("continue"); gate and register the new version."""
    s, ledger = ctx.settings, ctx.ledger
    trained = [v["version"] for v in ledger.model_versions() if v["round_id"] == round_id]
    if trained:  # a crash after registering the checkpoint, before the round was marked done
        return trained[-1]
    pairs = ledger.verified_pairs()
    parent = current_learner(ctx)
    if not pairs:
        log.info("round %d: no accepted or edited pairs; the learner stays %s", round_id, parent["version"])
        return parent["version"]
    from loop import learner, versions

    split = versions.split_dev(pairs, s.learner.dev_fraction)  # by the bare source: stable if the instruction changes
    instruction = learner_instruction(s)
    split = versions.DevSplit(*([(learner_input(instruction, x), y) for x, y in part]
                                for part in (split.train, split.select, split.gate)))
    if not split.train:
        log.info("round %d: all %d verified pairs are held out for dev; the learner stays %s", round_id,
                 len(pairs), parent["version"])
        return parent["version"]
    version = _next_version(ledger)
    out = Path(s.models_dir) / version
    parent_path = s.learner.base_model if parent["version"] == BASE_VERSION else parent["path"]
    lengths = {"max_source_tokens": s.learner.max_source_tokens, "max_target_tokens": s.learner.max_target_tokens}
    early_stop = len(split.select) >= s.learner.min_dev_pairs  # a handful of pairs would pick epochs by noise
    start = s.learner.base_model if s.learner.regime == "retrain" else parent_path
    metrics = learner.fine_tune(
        start, split.train, out, epochs=s.learner.epochs, lr=s.learner.lr, optimizer=s.learner.optimizer,
        warmup=s.learner.warmup, weight_decay=s.learner.weight_decay,
        batch_size=min(16, s.learner.batch_size), seed=s.learner.seed + round_id, progress=ctx.progress,
        dev_pairs=split.select if early_stop else None, patience=s.learner.patience if early_stop else None,
        **lengths,
    )
    metrics["held_out"], metrics["regime"] = split.held_out, s.learner.regime
    if len(split.gate) >= s.learner.min_dev_pairs:  # the gate, on pairs neither model trained or selected on
        metrics["gate_pairs"] = len(split.gate)
        metrics["gate_loss"] = learner.evaluate_loss(str(out), split.gate, **lengths)
        metrics["parent_gate_loss"] = learner.evaluate_loss(parent_path, split.gate, **lengths)
        promote, note = versions.gate(metrics["gate_loss"], metrics["parent_gate_loss"], parent["version"],
                                      len(split.gate))
    else:
        promote, note = True, (f"promoted without a gate ({len(split.gate)} gate pairs so far; it needs "
                               f"{s.learner.min_dev_pairs})")
    with versions.models_lock(s.models_dir):  # against a rollback or a prune in another process
        promote = ledger.add_model_version(
            version, path=str(out), parent=parent["version"], round_id=round_id, pairs=len(pairs), metrics=metrics,
            promote=promote, note=note, expect_current=parent["version"],
        )
        pruned = versions.prune(ledger, s.models_dir, s.learner.keep_last, Path(s.models_dir) / ".ct2")
    if promote and s.learner.runtime != "hf":  # convert now, so the next round's scoring starts at once
        from loop import runtime

        runtime.convert(str(out), s.learner.runtime, Path(s.models_dir) / ".ct2")
    log.info("round %d: learner %s trained on %d pairs (loss %.3f): %s%s", round_id, version, len(split.train),
             metrics.get("train_loss", float("nan")), note, f"; pruned {', '.join(pruned)}" if pruned else "")
    return version


def open_round(ctx: Context, *, ahead_of: int | None = None) -> Step:
    """Select a new round unless `select.max_rounds` is reached or the pool is exhausted (then `idle`);
    `ahead_of`: the round still being verified, when the new one is a look-ahead."""
    s, ledger = ctx.settings, ctx.ledger
    if s.select.max_rounds is not None and len(ledger.rounds()) >= s.select.max_rounds:
        return Step("idle", "idle: max_rounds reached")
    round_id = select_round(ctx)
    if round_id is None:
        return Step("idle", "idle: pool exhausted")
    ahead = f" (look-ahead: round {ahead_of} is being verified)" if ahead_of is not None else ""
    return Step("moved", f"round {round_id}: selected{ahead}", round_id, "selected")


def _progress(counts: dict) -> str:
    return f"verified {counts['verified']}/{counts['imported']}" + (
        f", {counts['skipped']} skipped" if counts["skipped"] else "")


def advance(ctx: Context) -> Step:
    """Do the one next step of the open rounds (or open a new one); return what happened.

    Rounds close and train in order: only the oldest open round (the head) closes. While it is verified,
    up to `team.lookahead` more rounds are opened (scored by the learner in use then), and a round on its
    way to annotators (selected, distilled) goes first, so that people always have a batch; the round
    opened after the head's training is scored by the newest learner.
    """
    ledger, s = ctx.ledger, ctx.settings
    _record_team(ctx)
    open_rounds = ledger.open_rounds()
    if not open_rounds:
        # edits and deletions of earlier rounds keep arriving after the last round, and exports read them
        sync_verifications(ctx, full=_full_sync_due(ctx))
        return open_round(ctx)
    quota = _quota(ctx)
    for rnd in open_rounds:  # a batch on its way to annotators first (a look-ahead, or a new round)
        round_id, state = rnd["id"], rnd["state"]
        if state == "selected":
            result = distill_round(ctx, round_id)
            ledger.set_round_state(round_id, "distilled", expect="selected")
            return Step("moved", f"round {round_id}: distilled {result['distilled']} ({result['failed']} failed)",
                        round_id, "distilled")
        if state == "distilled":
            if ctx.studio is not None and ctx.project_id is not None:  # before the tasks arrive: each wants `quota`
                ctx.studio.set_overlap(ctx.project_id, quota)
            n = import_round(ctx, round_id)
            ledger.set_round_state(round_id, "imported", expect="distilled")  # import_round recorded the project
            return Step("moved", f"round {round_id}: imported {n} tasks", round_id, "imported")
    head = open_rounds[0]
    round_id, state = head["id"], head["state"]
    if state == "training":
        version = train_round(ctx, round_id)
        ledger.set_round_state(round_id, "done", expect="training")
        return Step("moved", f"round {round_id}: done, learner {version}", round_id, "done")
    unknown = [r for r in open_rounds if r["state"] not in ("imported", "verifying")]
    if unknown:
        raise LabelloopError(f"round {unknown[0]['id']} is in unexpected state {unknown[0]['state']!r}")
    imported = [r for r in open_rounds if r["state"] == "imported"]
    for rnd in imported:  # a round left here by a crash: every task gets its draft (imports nothing new)
        import_round(ctx, rnd["id"])
    sync_verifications(ctx, full=bool(imported) or _full_sync_due(ctx))
    for rnd in imported:
        _deadline(ctx, rnd)  # its clock starts as its tasks reach annotators
        ledger.set_round_state(rnd["id"], "verifying", expect="imported")
    counts = team.tally(ledger.item_tallies(round_id), quota)
    deadline = _deadline(ctx, ledger.get_round(round_id))
    if counts["open"] and deadline is not None and datetime.now(timezone.utc) >= deadline:
        return Step("moved", close_round(ctx, round_id, "deadline"), round_id, "training")
    if counts["open"] == 0:  # every task verified or skipped by all assigned (an empty import is done too)
        if counts["skipped"] == 0:
            ledger.set_round_state(round_id, "training", expect="verifying", closed_reason="complete")
            return Step("moved", f"round {round_id}: all {counts['verified']} verified", round_id, "training")
        return Step("moved", close_round(ctx, round_id, "complete"), round_id, "training")
    if len(open_rounds) <= s.team.lookahead:
        step = open_round(ctx, ahead_of=round_id)
        if step.kind == "moved":
            return step
    until = f", deadline {deadline.isoformat(timespec='seconds')}" if deadline is not None else ""
    ahead = "".join(f"; look-ahead round {r['id']} {_progress(team.tally(ledger.item_tallies(r['id']), quota))}"
                    for r in open_rounds[1:])
    return Step("waiting", f"waiting: round {round_id} {_progress(counts)}{until}{ahead}", round_id, "verifying")


def run_until_waiting(ctx: Context, max_steps: int = 20) -> list[Step]:
    """Advance step by step until the loop waits for annotators or has nothing to do."""
    done = []
    for _ in range(max_steps):
        step = advance(ctx)
        done.append(step)
        if step.settled:
            log.debug("%s", step)  # the scheduler reports waiting states only when they change
            break
        log.info("%s", step)
    return done
