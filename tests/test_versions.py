"""Pool scoring that recomputes only what changed, and the learner's versions: gate, rollback, pruning.

Real ledger (SQLite in a tmp dir), the real starter learner and real R; spies only count calls.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from loop import embed, learner, rounds, scorer, versions
from loop.cli import main
from loop.config import load_settings
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.rounds import Context

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT / "data" / "paradetox" / "pool.tsv"


def _pool_file(path: Path, start: int, stop: int) -> Path:
    with POOL.open(newline="") as src, path.open("w", newline="") as dst:
        rows = list(csv.reader(src, delimiter="\t"))
        csv.writer(dst, delimiter="\t", lineterminator="\n").writerows([rows[0], *rows[1 + start : 1 + stop]])
    return path


def _ctx(tmp_path: Path, starter_model: Path, n: int = 12, **overrides) -> Context:
    overrides.setdefault("learner__instruction", False)  # the starter was trained on bare texts
    settings = load_settings(data_dir=str(tmp_path / "proj"), learner__base_model=str(starter_model),
                             learner__max_new_tokens=16, **overrides)
    ledger = Ledger(settings.ledger_path)
    ingest(ledger, _pool_file(tmp_path / "pool.tsv", 0, n), text_col="text", reference_col="reference")
    return Context(settings=settings, ledger=ledger)


@pytest.fixture
def spies(monkeypatch):
    """Count the texts the learner generates for and R scores (the real functions still run)."""
    calls = {"generated": 0, "scored": 0}
    real_generate, real_score = learner.generate, scorer.score_texts

    def generate(model, texts, **kw):
        calls["generated"] += len(texts)
        return real_generate(model, texts, **kw)

    def score_texts(scorer, texts, **kw):
        calls["scored"] += len(texts)
        return real_score(scorer, texts, **kw)

    monkeypatch.setattr(learner, "generate", generate)
    monkeypatch.setattr(scorer, "score_texts", score_texts)
    return calls


def test_scoring_recomputes_only_what_changed(tmp_path, starter_model, spies):
    ctx = _ctx(tmp_path, starter_model, n=12)
    v0 = rounds.current_learner(ctx)
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    first = rounds.score_candidates(ctx, ids, v0)
    assert sorted(first) == ids and spies == {"generated": 12, "scored": 12}
    assert all(0 <= s <= 1 for _, s in first.values())

    assert rounds.score_candidates(ctx, ids, v0) == first  # nothing changed: nothing recomputed
    assert spies == {"generated": 12, "scored": 12}

    ingest(ctx.ledger, _pool_file(tmp_path / "more.tsv", 12, 16), text_col="text", reference_col="reference")
    ids = [it["id"] for it in ctx.ledger.pool_items()]
    before = rounds.score_candidates(ctx, ids, v0)  # four new items: only they are generated and scored
    assert spies == {"generated": 16, "scored": 16}

    # a different R re-scores the stored outputs of the same version without regenerating them
    ctx.settings = load_settings(data_dir=ctx.settings.data_dir, learner__base_model=str(starter_model),
                                 learner__max_new_tokens=16, learner__instruction=False, scorer__normalise="none",
                                 scorer__attributes=[{"kind": "profanity", "weight": 2.0}])
    again = rounds.score_candidates(ctx, ids, v0)
    assert spies == {"generated": 16, "scored": 32}
    assert again.keys() == before.keys()
    assert all(again[i][0] == before[i][0] for i in ids)  # the same stored outputs ...
    assert all(again[i][1] == pytest.approx(before[i][1]) for i in ids)  # ... and profanity*2/2 == profanity
    key = rounds.score_key(ctx.settings, "v0")
    assert key[1] == "weighted(profanity*2)" and len(ctx.ledger.scores(*key)) == 16  # under R's new signature

    # a new learner version regenerates everything for that version
    ctx.ledger.add_model_version("v1", path=str(starter_model), parent="v0", round_id=1, pairs=0, metrics={})
    rounds.score_candidates(ctx, ids, ctx.ledger.find_current_model())
    assert spies == {"generated": 32, "scored": 48}


def test_prepare_pool_embeds_once_and_new_items_join_the_clusters_without_refitting(tmp_path, starter_model,
                                                                                    monkeypatch):
    """Behaviour changed on purpose (#13): an ingest used to refit KMeans and permute every cluster id."""
    ctx = _ctx(tmp_path, starter_model, n=10, cluster__k=2)
    embedded, clustered = [], []
    real_embed, real_fit = embed.embed, rounds.cluster_mod.fit
    monkeypatch.setattr(embed, "embed", lambda texts, **kw: embedded.append(len(texts)) or
                        real_embed(texts, **kw))
    monkeypatch.setattr(rounds.cluster_mod, "fit", lambda m, **kw: clustered.append(len(m)) or real_fit(m, **kw))
    first = rounds.prepare_pool(ctx)
    assert len(first) == 10 and set(first.values()) == {0, 1}
    assert rounds.prepare_pool(ctx) == first and embedded == [10] and clustered == [10]
    ingest(ctx.ledger, _pool_file(tmp_path / "more.tsv", 10, 13), text_col="text", reference_col="reference")
    after = rounds.prepare_pool(ctx)
    assert len(after) == 13 and {i: after[i] for i in first} == first  # nobody moved
    assert embedded == [10, 3] and clustered == [10]
    assert ctx.ledger.find_clustering_version()["version"] == 1
    # a change of K is a new clustering version
    ctx.settings.cluster.k = 3
    rounds.prepare_pool(ctx)
    assert clustered == [10, 13] and ctx.ledger.find_clustering_version()["version"] == 2


def _verify_all(ledger: Ledger) -> None:
    """A round over every pool item, each accepted with its reference as the target (real ledger rows)."""
    items = ledger.pool_items()
    round_id = ledger.create_round(strategy="random", budget=len(items), learner_version="v0",
                                   items=[{"pool_id": it["id"], "cluster": 0, "score": 0.5} for it in items])
    ledger.record_verifications([
        {"annotation_id": 1000 + it["id"], "task_id": it["id"], "round_id": round_id, "pool_id": it["id"],
         "verdict": "accept", "target": it["reference"], "updated_at": "2025-01-01T00:00:00"} for it in items
    ])


GATED = {"learner__dev_fraction": 0.4, "learner__min_dev_pairs": 3, "learner__epochs": 2}


def test_gate_holds_a_worse_version_and_rollback_promotes_it(tmp_path, starter_model):
    ctx = _ctx(tmp_path, starter_model, n=30, learner__lr=3.0, **GATED)  # lr 3.0 wrecks the weights
    _verify_all(ctx.ledger)
    assert rounds.train_round(ctx, 1) == "v1"
    v1 = ctx.ledger.find_model_version("v1")
    assert v1["status"] == "held" and v1["note"].startswith("held: worse on the gate pairs than v0")
    assert v1["metrics"]["gate_loss"] > v1["metrics"]["parent_gate_loss"]
    assert ctx.ledger.find_current_model()["version"] == "v0"  # the version in use did not change

    result = CliRunner().invoke(main, ["models"], env={"LABELLOOP_DATA_DIR": str(ctx.settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert "held" in result.output and "v0 *" in result.output

    versions.rollback(ctx.ledger, "v1")
    assert ctx.ledger.find_current_model()["version"] == "v1"
    assert ctx.ledger.find_model_version("v1")["status"] == "promoted"
    result = CliRunner().invoke(main, ["rollback", "v0"], env={"LABELLOOP_DATA_DIR": str(ctx.settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert ctx.ledger.find_current_model()["version"] == "v0"
    result = CliRunner().invoke(main, ["rollback", "v9"], env={"LABELLOOP_DATA_DIR": str(ctx.settings.data_dir)})
    assert result.exit_code != 0 and "no learner version 'v9'; known: v0, v1" in result.output


def test_gate_promotes_a_better_version_with_early_stopping_metrics(tmp_path, starter_model):
    ctx = _ctx(tmp_path, starter_model, n=50, learner__lr=3e-4, **{**GATED, "learner__epochs": 4})
    _verify_all(ctx.ledger)
    assert rounds.train_round(ctx, 1) == "v1"
    v1 = ctx.ledger.find_current_model()
    assert v1["version"] == "v1" and v1["status"] == "promoted" and v1["note"].startswith("promoted v0")
    metrics = ctx.ledger.find_model_version("v1")["metrics"]
    split = versions.split_dev(ctx.ledger.verified_pairs(), GATED["learner__dev_fraction"])
    assert metrics["dev_pairs"] == len(split.select) >= 3 and metrics["pairs"] == len(split.train)
    assert metrics["gate_pairs"] == len(split.gate) >= 3
    assert metrics["gate_loss"] <= metrics["parent_gate_loss"]
    # the best epoch on the selection pairs is saved; patience 1 stops one epoch after it (or at 4 epochs)
    losses = metrics["dev_losses"]
    assert metrics["epochs"] == len(losses) and metrics["best_epoch"] == losses.index(min(losses)) + 1
    assert metrics["epochs"] in (metrics["best_epoch"] + 1, 4)
    assert metrics["dev_loss"] == min(losses)
    lengths = {"max_target_tokens": ctx.settings.learner.max_target_tokens}  # the lengths training used
    assert learner.evaluate_loss(v1["path"], split.select, **lengths) == pytest.approx(metrics["dev_loss"], rel=1e-5)
    # the gate's losses are on pairs neither model trained or selected on
    assert learner.evaluate_loss(v1["path"], split.gate, **lengths) == pytest.approx(metrics["gate_loss"], rel=1e-5)
    assert f"{metrics['gate_loss']:.4f} vs {metrics['parent_gate_loss']:.4f}" in v1["note"]


def test_the_dev_split_is_fixed_from_the_first_pair_and_its_parts_never_meet():
    pairs = [(f"source {i}", f"target {i}") for i in range(400)]
    split = versions.split_dev(pairs, 0.2)
    assert {*split.train, *split.select, *split.gate} == set(pairs)
    assert not ({*split.train} & {*split.select} or {*split.train} & {*split.gate} or {*split.select} & {*split.gate})
    assert 40 <= len(split.select + split.gate) <= 120 and split.select and split.gate
    for n in (1, 5, 30, 200):  # a pair's side does not depend on how many pairs exist
        few = versions.split_dev(pairs[:n], 0.2)
        assert few.train == [p for p in split.train if p in pairs[:n]]
        assert few.gate == [p for p in split.gate if p in pairs[:n]]


def test_dev_pairs_are_never_trained_on_even_before_the_gate_starts(tmp_path, starter_model):
    # 12 pairs at dev_fraction 0.5: a few are dev pairs, fewer than min_dev_pairs (8), so no gate yet;
    # they are still held out, so that a later gate never judges a parent that trained on them
    ctx = _ctx(tmp_path, starter_model, n=12, learner__epochs=1, learner__dev_fraction=0.5)
    _verify_all(ctx.ledger)
    split = versions.split_dev(ctx.ledger.verified_pairs(), 0.5)
    assert 0 < split.held_out < 12
    rounds.train_round(ctx, 1)
    v1 = ctx.ledger.find_current_model()
    assert v1["metrics"]["pairs"] == len(split.train) == 12 - split.held_out
    assert "without a gate" in v1["note"] and v1["pairs"] == 12


def test_small_verified_sets_are_promoted_without_a_gate(tmp_path, starter_model):
    ctx = _ctx(tmp_path, starter_model, n=5, learner__epochs=1)  # 5 pairs: below min_dev_pairs (8)
    _verify_all(ctx.ledger)
    rounds.train_round(ctx, 1)
    v1 = ctx.ledger.find_current_model()
    assert v1["version"] == "v1" and "without a gate" in v1["note"] and v1["pairs"] == 5


def test_keep_last_prunes_old_checkpoints_but_never_the_one_in_use(tmp_path, starter_model):
    ctx = _ctx(tmp_path, starter_model, n=6, learner__epochs=1, learner__keep_last=1)
    _verify_all(ctx.ledger)
    for round_id in (1, 2, 3):
        rounds.train_round(ctx, round_id)
    on_disk = sorted(p.name for p in ctx.settings.models_dir.iterdir() if not p.name.startswith("."))
    assert on_disk == ["v3"]
    assert [v["pruned"] for v in ctx.ledger.model_versions()] == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="removed from disk"):
        versions.rollback(ctx.ledger, "v1")
    assert versions.prune(ctx.ledger, ctx.settings.models_dir, 1) == []


@pytest.mark.parametrize(("pairs", "fraction", "held_out"), [(40, 0.0, 0), (40, 0.5, None), (3, 0.99, 3)])
def test_split_dev_is_stable_and_disjoint(pairs, fraction, held_out):
    data = [(f"source {i}", f"target {i}") for i in range(pairs)]
    split = versions.split_dev(data, fraction)
    assert sorted(split.train + split.select + split.gate) == sorted(data)
    if held_out is not None:
        assert split.held_out == held_out
    else:
        assert 0 < len(split.select) and 0 < len(split.gate) and split.held_out < pairs
        more = versions.split_dev(data + [("source x", "y")], fraction)
        assert set(split.gate) <= set(more.gate)  # a dev pair stays dev as the verified set grows


# --- rollback against training and pruning in other processes ----------------------------------------------
def test_a_version_trained_from_a_parent_that_was_rolled_back_is_held_not_promoted(tmp_path):
    """A training step that finishes after a rollback must not promote its child over the rolled-back version."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_model_version("v0", path="base", parent=None, round_id=None, pairs=0, metrics={})
    ledger.add_model_version("v1", path="p1", parent="v0", round_id=1, pairs=4, metrics={})
    ledger.promote_model("v0")  # the rollback, while v2 trains from v1
    promoted = ledger.add_model_version("v2", path="p2", parent="v1", round_id=2, pairs=8, metrics={},
                                        promote=True, note="promoted (gate)", expect_current="v1")
    assert promoted is False and ledger.find_current_model()["version"] == "v0"
    v2 = ledger.get_model_version("v2")
    assert v2["status"] == "held" and "v0 was put in use while this version trained from v1" in v2["note"]
    assert ledger.add_model_version("v3", path="p3", parent="v0", round_id=3, pairs=9, metrics={},
                                    expect_current="v0") is True


def test_rollback_waits_for_the_versions_lock_another_process_holds(tmp_path):
    """Rollback, training's registration and pruning serialise on one lock across processes."""
    import subprocess
    import sys

    from loop.errors import VersionError

    models = tmp_path / "models"
    (models / "v1").mkdir(parents=True)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_model_version("v0", path="base", parent=None, round_id=None, pairs=0, metrics={})
    ledger.add_model_version("v1", path=str(models / "v1"), parent="v0", round_id=1, pairs=4, metrics={})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from loop.versions import models_lock\n"
         f"with models_lock({str(models)!r}):\n    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(VersionError, match="held the versions lock"), versions.models_lock(models, timeout=0.3):
            pass
        assert ledger.find_current_model()["version"] == "v1"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert versions.rollback(ledger, "v0", models)["version"] == "v0" == ledger.find_current_model()["version"]


def test_leftovers_of_a_killed_training_are_swept_and_checkpoints_kept(tmp_path):
    """A kill during fine_tune's or convert's atomic write leaves model-sized temporary directories."""
    models = tmp_path / "models"
    leftovers = [models / ".v3.tmp-abc", models / ".v2.old-xyz", models / ".ct2" / ".d1f-float32.tmp-q"]
    kept = [models / "v2", models / ".ct2" / "d1f-float32", models / "starter"]
    for path in leftovers + kept:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"w")
    assert sorted(versions.sweep_temporaries(models)) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and all((p / "model.safetensors").exists() for p in kept)
    assert versions.sweep_temporaries(models) == [] and versions.sweep_temporaries(tmp_path / "none") == []


# --- the learner's instruction: the same input for generation, training and dev loss -----------------------
def test_the_learner_sees_the_templates_instruction_in_generation_training_and_dev_loss(tmp_path, starter_model,
                                                                                          monkeypatch):
    template = tmp_path / "mine.txt"
    template.write_text("name: mine\nversion: 1\ninstruction: Make polite: {text}\n---\nRewrite: {text}\n")
    ctx = _ctx(tmp_path, starter_model, n=30, teacher__template=str(template),
               learner__instruction=True, **GATED)
    seen: dict[str, list[str]] = {"generate": [], "train": [], "select": [], "gate": []}
    real_generate, real_tune, real_loss = learner.generate, learner.fine_tune, learner.evaluate_loss

    def generate(model, texts, **kw):
        seen["generate"] += texts
        return real_generate(model, texts, **kw)

    def fine_tune(base, pairs, out, **kw):
        seen["train"] += [s for s, _ in pairs]
        seen["select"] += [s for s, _ in kw.get("dev_pairs") or []]
        return real_tune(base, pairs, out, **kw)

    def evaluate_loss(model, pairs, **kw):
        seen["gate"] += [s for s, _ in pairs]
        return real_loss(model, pairs, **kw)

    monkeypatch.setattr(learner, "generate", generate)
    monkeypatch.setattr(learner, "fine_tune", fine_tune)
    monkeypatch.setattr(learner, "evaluate_loss", evaluate_loss)
    items = ctx.ledger.pool_items()
    rounds.score_candidates(ctx, [it["id"] for it in items], rounds.current_learner(ctx))
    _verify_all(ctx.ledger)
    rounds.train_round(ctx, 1)
    assert sorted(seen["generate"]) == sorted(f"Make polite: {it['text']}" for it in items)  # in the engine's order
    for part in ("train", "select", "gate"):
        assert seen[part] and all(s.startswith("Make polite: ") for s in seen[part]), part
    # the split is by the bare source, so the same pairs are held out with or without an instruction
    split = versions.split_dev(ctx.ledger.verified_pairs(), GATED["learner__dev_fraction"])
    assert sorted(seen["train"]) == sorted(f"Make polite: {s}" for s, _ in split.train)
    # outputs under another instruction are stored apart: changing it regenerates
    assert rounds.score_key(ctx.settings, "v0")[0].startswith("v0|")


# --- a several-attribute R: normalised over the candidates, each attribute's contribution in status ----------
def test_a_weighted_r_is_normalised_over_the_candidates_and_status_shows_each_attributes_share(tmp_path,
                                                                                               starter_model):
    from loop import status
    from tests.test_scorer import _tiny_bert

    clf = _tiny_bert(tmp_path / "clf", ["toxic", "insult"], problem_type="multi_label_classification")
    attributes = [{"kind": "profanity", "weight": 1.0},
                  {"kind": "hf-classifier", "model": str(clf), "label": "insult", "weight": 3.0}]
    ctx = _ctx(tmp_path, starter_model, n=16, scorer__attributes=attributes, select__budget=4, cluster__k=2)
    round_id = rounds.select_round(ctx)
    key, signature = rounds.score_key(ctx.settings, "v0")
    assert signature.startswith("weighted[rank](profanity*1,hf-classifier:")
    raw = [ctx.ledger.scores(key, "profanity"), ctx.ledger.scores(key, f"hf-classifier:{clf}#insult")]
    assert all(len(r) == 16 for r in raw)  # each attribute stored on its own, reusable when weights change
    ids = sorted(raw[0])
    expected, _ = scorer.combine([[r[i][1] for i in ids] for r in raw], [1.0, 3.0], "rank")
    combined = ctx.ledger.scores(key, signature)
    assert [combined[i][1] for i in ids] == pytest.approx(expected.tolist())
    batch = ctx.ledger.batch(round_id)
    assert all(b["score"] == pytest.approx(combined[b["pool_id"]][1]) for b in batch)

    rows = status.facts(ctx.ledger)["r_attributes"]
    assert [(r["round"], r["attribute"], r["weight"]) for r in rows] == [
        (round_id, "profanity", 1.0), (round_id, f"hf-classifier:{clf}#insult", 3.0)]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    picked = [b["pool_id"] for b in batch]
    assert rows[0]["mean_score"] == pytest.approx(np.mean([raw[0][i][1] for i in picked]))
    result = CliRunner().invoke(main, ["status"], env={"LABELLOOP_DATA_DIR": str(ctx.settings.data_dir)})
    assert result.exit_code == 0 and "R's attributes" in result.output, result.output


# --- the training regime: retrain from the base on all of L (the paper), or continue from the version in use --
@pytest.mark.parametrize(("regime", "second_start"), [("retrain", "base"), ("continue", "v1")])
def test_each_round_starts_from_the_base_or_from_the_version_in_use(tmp_path, starter_model, monkeypatch, regime,
                                                                    second_start):
    ctx = _ctx(tmp_path, starter_model, n=12, learner__epochs=1, learner__regime=regime)
    starts = []
    real = learner.fine_tune

    def fine_tune(base, pairs, out, **kw):
        starts.append(base)
        return real(base, pairs, out, **kw)

    monkeypatch.setattr(learner, "fine_tune", fine_tune)
    _verify_all(ctx.ledger)
    rounds.train_round(ctx, 1)
    rounds.train_round(ctx, 2)
    v1 = ctx.ledger.find_model_version("v1")
    assert starts == [str(starter_model), str(starter_model) if second_start == "base" else v1["path"]]
    assert ctx.ledger.find_model_version("v2")["metrics"]["regime"] == regime
