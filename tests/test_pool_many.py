"""Several references and group memberships per item, the --replace repair, stratified splits, the
subgroup shown to annotators, and pool paths read relative to the config file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from loop import export, metrics
from loop.cli import main
from loop.config import load_settings
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.regions import with_subgroup

# a counter-narration file as they come: two reference columns, a text repeated under another group
CONAN = (
    "hate,cn1,cn2,target\n"
    "you are all thieves,That is a stereotype,Most people work hard,migrants\n"
    "women cannot lead,Many women lead well,,women\n"
    "You are ALL   thieves,Please look at the data,,poor\n"
    "women cannot lead,Many women lead well,,women\n"
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def conan(tmp_path: Path, text: str = CONAN, name: str = "conan.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_reference_column_and_every_group_of_a_repeated_text_is_kept(tmp_path, ledger):
    counts = ingest(ledger, conan(tmp_path), text_col="hate", reference_col=["cn1", "cn2"], group_col="target")
    # row 4 repeats row 2 exactly (a duplicate); row 3 repeats row 1 with a new reference and group (merged)
    assert counts == {"read": 4, "added": 2, "merged": 1, "duplicates": 1, "references": 4, "groups": 3}
    first, second = ledger.pool_items()
    assert (first["reference"], first["subgroup"]) == ("That is a stereotype", "migrants")  # the first row's own
    assert ledger.references() == {
        first["id"]: ["That is a stereotype", "Most people work hard", "Please look at the data"],
        second["id"]: ["Many women lead well"],
    }
    assert ledger.memberships() == {first["id"]: ["migrants", "poor"], second["id"]: ["women"]}


def test_a_later_file_adds_references_to_stored_texts_without_new_items(tmp_path, ledger):
    ingest(ledger, conan(tmp_path), text_col="hate", reference_col="cn1")
    more = conan(tmp_path, "hate,cn\nwomen cannot lead,Leadership has no gender\nnew text,new ref\n", "more.csv")
    counts = ingest(ledger, more, text_col="hate", reference_col="cn")
    assert (counts["added"], counts["merged"], counts["references"]) == (1, 1, 2)
    women = next(i for i in ledger.pool_items() if i["text"] == "women cannot lead")
    assert ledger.references([women["id"]]) == {women["id"]: ["Many women lead well", "Leadership has no gender"]}


def test_jsonl_lists_and_a_group_separator_give_several_values(tmp_path, ledger):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"text": "a", "refs": ["r1", " r2 ", "", "r1"], "g": "x|y| |x"}) + "\n")
    ingest(ledger, path, reference_col="refs", group_col="g", group_sep="|")
    assert ledger.references() == {1: ["r1", "r2"]} and ledger.memberships() == {1: ["x", "y"]}


def test_a_non_text_value_in_a_reference_list_is_an_error_naming_the_line(tmp_path, ledger):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b", "refs": ["ok", 3]}) + "\n")
    with pytest.raises(Exception, match=r"pool.jsonl:2: column 'refs' is not text \(int: 3\)"):
        ingest(ledger, path, reference_col="refs")
    assert ledger.pool_count() == 0


def _send(ledger: Ledger, pool_ids: list[int]) -> int:
    """Put items in a round's batch, as selection does: they count as shown to annotators."""
    return ledger.create_round(strategy="stratified", budget=len(pool_ids), learner_version="v0",
                               items=[{"pool_id": p, "cluster": 0, "score": 0.5} for p in pool_ids])


def test_replace_repairs_a_wrong_ingest_and_keeps_what_annotators_saw(tmp_path, ledger):
    # ingested with the wrong reference column: cn2 holds one reference, and the groups were forgotten
    ingest(ledger, conan(tmp_path), text_col="hate", reference_col="cn2")
    ledger.add_pool([{"text": "stale text", "norm": "stale text"}, {"text": "sent text", "norm": "sent text"}])
    stale, sent = (i["id"] for i in ledger.pool_items()[2:])
    ledger.put_embeddings("m", [stale, sent], [[0.0, 1.0], [1.0, 0.0]])
    ledger.put_scores("v0", "r", [stale], ["interim"], [0.5])
    _send(ledger, [1, sent])
    before = {i["text"]: i["id"] for i in ledger.pool_items()}

    counts = ingest(ledger, conan(tmp_path), text_col="hate", reference_col=["cn1", "cn2"], group_col="target",
                    replace=True)
    assert {k: counts[k] for k in ("added", "updated", "unchanged", "removed", "kept")} == {
        "added": 0, "updated": 2, "unchanged": 0, "removed": 1, "kept": 1}
    after = {i["text"]: i for i in ledger.pool_items()}
    assert set(after) == {"you are all thieves", "women cannot lead", "sent text"}  # stale text went
    assert {t: i["id"] for t, i in after.items()} == {t: before[t] for t in after}  # ids (and verifications) stay
    assert after["you are all thieves"]["reference"] == "That is a stereotype"
    assert ledger.references([1])[1] == ["That is a stereotype", "Most people work hard", "Please look at the data"]
    assert ledger.memberships([1])[1] == ["migrants", "poor"]
    assert ledger.embeddings("m")[0] == [sent]  # the removed item's embedding and scores went with it
    assert ledger.scores("v0", "r") == {}
    # a second replace with the same file changes nothing
    again = ingest(ledger, conan(tmp_path), text_col="hate", reference_col=["cn1", "cn2"], group_col="target",
                   replace=True)
    assert (again["updated"], again["unchanged"], again["removed"], again["kept"]) == (0, 2, 0, 1)


def test_a_dry_run_counts_and_stores_nothing(tmp_path, ledger):
    ingest(ledger, conan(tmp_path), text_col="hate", reference_col="cn2")
    snapshot = (ledger.pool_items(), ledger.references(), ledger.memberships())
    counts = ingest(ledger, conan(tmp_path), text_col="hate", reference_col="cn1", group_col="target",
                    replace=True, dry_run=True)
    assert counts["updated"] == 2
    assert (ledger.pool_items(), ledger.references(), ledger.memberships()) == snapshot


def test_the_cli_says_how_to_repair_and_repairs(tmp_path):
    path = conan(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n[pool]\npath = "conan.csv"\ntext_col = "hate"\n'
                      'reference_col = "cn2"\n')
    runner = CliRunner()
    first = runner.invoke(main, ["-c", str(config), "ingest", str(path)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["-c", str(config), "ingest", str(path), "--reference-col", "cn1"])
    assert "no new text: to correct how the pool was read before" in again.output
    fixed = runner.invoke(main, ["-c", str(config), "ingest", str(path), "--reference-col", "cn1", "--group-col",
                                 "target", "--replace"])
    assert fixed.exit_code == 0, fixed.output
    assert "updated 2" in fixed.output and "removed 0" in fixed.output
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    assert [i["reference"] for i in ledger.pool_items()] == ["That is a stereotype", "Many women lead well"]


def test_an_older_ledger_gains_the_tables_with_its_references_and_groups(tmp_path):
    path = tmp_path / "old.sqlite"
    Ledger(path).add_pool([{"text": "a", "norm": "a", "reference": "r", "subgroup": "g"},
                           {"text": "b", "norm": "b"}])
    with sqlite3.connect(path) as conn:  # as a ledger of schema 4 was: no per-item lists
        conn.execute("DROP TABLE pool_references")
        conn.execute("DROP TABLE pool_groups")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    reopened = Ledger(path)
    assert reopened.references() == {1: ["r"]} and reopened.memberships() == {1: ["g"]}


# --- scoring against every reference, counting every group ----------------------------------------------------
def test_a_second_reference_can_only_raise_the_score():
    outputs = ["most people work hard"]
    one = metrics.task_scores(outputs, ["that is a stereotype"])
    both = metrics.task_scores(outputs, [["that is a stereotype", "most people work hard"]])
    assert both["chrf"] > one["chrf"] and both["chrf"] == pytest.approx(100.0)
    assert metrics.sentence_chrf(outputs, [["that is a stereotype", "most people work hard"]]) == [
        pytest.approx(100.0)]
    mixed = metrics.task_scores(["a b c", "d e f"], [["a b c"], ["x y z", "d e f"]])  # one item has one reference
    assert mixed["chrf"] == pytest.approx(100.0)


def test_an_item_in_two_groups_counts_in_both():
    rates = metrics.group_rates([True, False, False], [["women", "migrants"], "women", "migrants"])
    assert rates == {"migrants": {"n": 2, "failures": 1, "rate": 0.5}, "women": {"n": 2, "failures": 1, "rate": 0.5}}


# --- export -----------------------------------------------------------------------------------------------
def test_stratified_splits_give_every_subgroup_its_share():
    records = [{"id": f"r{i}", "subgroup": "big" if i < 40 else "small"} for i in range(50)]
    plain = export.assign_splits(records, {"train": 0.8, "test": 0.2}, seed=1)
    strat = export.assign_splits(records, {"train": 0.8, "test": 0.2}, seed=1, stratify=True)
    def count(split: list[dict], group: str) -> int:
        return sum(r["subgroup"] == group for r in split)
    assert (count(strat["train"], "big"), count(strat["test"], "big")) == (32, 8)
    assert (count(strat["train"], "small"), count(strat["test"], "small")) == (8, 2)
    assert sorted(r["id"] for s in strat.values() for r in s) == sorted(r["id"] for r in records)
    assert strat == export.assign_splits(records, {"train": 0.8, "test": 0.2}, seed=1, stratify=True)
    assert plain != strat  # the unstratified hash split does not hit the shares exactly here


def test_stratify_needs_a_split(tmp_path):
    result = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "x.jsonl"), "--stratify"])
    assert result.exit_code == 1 and "--stratify applies to a split" in result.output


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_references_and_subgroups_are_exported_in_every_format(tmp_path, fmt):
    from tests.test_export import read_back

    records = [export._record(pool_id=1, round_=1, source="s", target="t", draft="t", verdict="accept", cluster=0,
                              subgroup="women", subgroups=["women", "migrants"], references=["r1", "r2"],
                              teacher=None, learner_version="v0", score=0.5, annotator=None, lead_time=None,
                              created_at=None, updated_at=None)]
    out = tmp_path / ("out" if fmt == "hf" else f"out.{fmt}")
    export.write(records, out, fmt)
    (back,) = read_back(out, fmt)
    assert back["references"] == ["r1", "r2"] and back["subgroups"] == ["women", "migrants"]


# --- the label config, and paths in a config file -------------------------------------------------------------
def test_the_subgroup_is_shown_under_the_source_text():
    config = (Path(__file__).parent.parent / "label_config" / "counter_narration.xml").read_text()
    shown = with_subgroup(config)
    assert shown.index('name="source"') < shown.index('value="$subgroup"') < shown.index('name="response"')
    assert with_subgroup(shown) == shown
    with pytest.raises(ValueError, match="no element named 'source'"):
        with_subgroup("<View></View>")


def test_a_relative_pool_path_is_read_against_the_config_file(tmp_path, monkeypatch, caplog):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "pool.csv").write_text("text\nx\n")
    config = tmp_path / "project" / "labelloop.toml"
    config.write_text('[pool]\npath = "data/pool.csv"\n[learner]\nbase_model = "google/flan-t5-base"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    settings = load_settings(config)
    assert settings.pool.path == tmp_path / "project" / "data" / "pool.csv"
    assert settings.learner.base_model == "google/flan-t5-base"  # a hub name stays a hub name
    # an older config whose path only works from the working directory still works, with a warning
    (tmp_path / "cwd.csv").write_text("text\nx\n")
    config.write_text('[pool]\npath = "cwd.csv"\n')
    assert load_settings(config).pool.path == Path("cwd.csv")
    assert "write it relative to the config file (../cwd.csv)" in caplog.text


# --- stable cluster ids (#13, item 6) ----------------------------------------------------------------------
def test_new_items_join_the_nearest_stored_centroid_and_a_refit_keeps_ids_where_regions_match():
    import numpy as np

    from loop import cluster

    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(m, 0.1, (20, 3)) for m in (0.0, 5.0, 10.0)]).astype(np.float32)
    labels, centroids = cluster.fit(blobs, k=3, seed=0)
    later = np.array([[0.1, 0.0, 0.0], [9.9, 10.0, 10.1]], dtype=np.float32)
    assert cluster.assign(later, centroids).tolist() == [labels[0], labels[-1]]
    refit_labels, refit_centroids = cluster.fit(blobs, k=3, seed=7)  # another seed permutes KMeans' ids
    mapping = cluster.align(refit_centroids, centroids)
    assert (mapping[refit_labels] == labels).all()
    # a centroid no region holds any more (NaN) is never chosen, and a grown K takes unused ids
    holes = centroids.copy()
    holes[labels[0]] = np.nan
    assert labels[0] not in cluster.assign(later, holes).tolist()
    grown = cluster.align(cluster.fit(blobs, k=4, seed=1)[1], centroids)
    assert sorted(grown.tolist()) == [0, 1, 2, 3]


def test_a_ledger_clustered_before_versions_keeps_its_ids_and_gains_centroids(tmp_path, starter_model):
    from loop import rounds
    from loop.service import ensure_pool

    pool = tmp_path / "pool.tsv"
    pool.write_text("text\treference\n" + "".join(f"rude text {i}\tpolite {i}\n" for i in range(8)))
    settings = load_settings(data_dir=str(tmp_path / "s"), pool__path=str(pool), cluster__k=2,
                             learner__base_model=str(starter_model))
    ledger = Ledger(settings.ledger_path)
    ensure_pool(settings, ledger)
    ctx = rounds.Context(settings, ledger)
    first = rounds.prepare_pool(ctx)
    with sqlite3.connect(settings.ledger_path) as conn:  # as schema 5 stored it: an identity with n, no versions
        conn.execute("DROP TABLE clusterings")
        conn.execute("ALTER TABLE rounds DROP COLUMN clustering")
        conn.execute(f"UPDATE clusters SET clustering = '{rounds.clustering_identity(settings)}|n=8'")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    ledger = Ledger(settings.ledger_path)
    ctx = rounds.Context(settings, ledger)
    assert rounds.prepare_pool(ctx) == first
    version = ledger.find_clustering_version()
    assert version["version"] == 1 and version["centroids"].shape[0] == 2


def test_teacher_fit_counts_only_rounds_of_the_current_clustering():
    from loop.status import teacher_fit

    rows = [{"cluster": 0, "clustering": 1, "verified": 10, "reject": 9},
            {"cluster": 0, "clustering": 2, "verified": 10, "reject": 1}]
    assert teacher_fit(rows, 0.3, 5)[0]["reject_rate"] == 0.5  # all rounds: two regions mixed
    (fit,) = teacher_fit(rows, 0.3, 5, clustering=2)
    assert (fit["verified"], fit["reject"], fit["flagged"]) == (10, 1, False)
