"""Tests for loop.simulate (and its report, loop.simreport): a tiny end-to-end run and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from loop import simreport
from loop.cli import main
from loop.simulate import SimConfig, SimulateError, load_split, run

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT / "data" / "paradetox" / "pool.tsv"
STARTER = ROOT / "data" / "paradetox" / "starter.tsv"


def _rows(path: Path, n: int) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row for _, row in zip(range(n), reader, strict=False)]


def _write_tsv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 60-row pool with a group column and a 40-text judge file (small enough to embed in seconds)."""
    d = tmp_path_factory.mktemp("sim")
    rows = [{**r, "group": "even" if i % 2 == 0 else "odd"} for i, r in enumerate(_rows(POOL, 60))]
    judge = _write_tsv(d / "judge.tsv", _rows(STARTER, 20))
    return {"dir": d, "data": _write_tsv(d / "pool.tsv", rows), "judge": judge}


def _cfg(tiny: dict, out: str, **kw) -> SimConfig:
    base = dict(data=str(tiny["data"]), group_col="group", out_dir=str(tiny["dir"] / out),
                judge_data=str(tiny["judge"]), cache_dir=str(tiny["dir"] / "cache"), pool_size=40, test_size=16,
                rounds=2, budget=8, k=3,
                seeds=[0, 1], epochs=1, progress=False)
    base.update(kw)
    return SimConfig(**base)


@pytest.fixture(scope="module")
def result(tiny: dict, starter_model: Path) -> dict:
    return run(_cfg(tiny, "all", learner=str(starter_model)), command="labelloop simulate --tiny")


def test_every_strategy_and_seed_is_evaluated_after_every_round(result: dict):
    got = {(r["strategy"], r["seed"], r["round"]) for r in result["records"]}
    want = {(s, seed, rnd) for s in SimConfig(data="x").strategies for seed in (0, 1) for rnd in (0, 1, 2)}
    assert got == want
    for r in result["records"]:
        assert r["labeled"] == 8 * r["round"]  # no rejections: the labeled set grows by the budget
        assert 0 <= r["chrf"] <= 100 and 0 <= r["offensive_share"] <= 1 and r["mtld"] >= 0
        assert set(r["groups"]) == {"even", "odd"}  # the group column, not the clusters, defines subgroups


def test_global_top_picks_the_highest_r_in_the_first_round(result: dict):
    first = {(r["strategy"], r["seed"]): r["mean_r_selected"] for r in result["records"] if r["round"] == 1}
    for seed in (0, 1):  # round 1 scores the same starter outputs for every strategy
        top = first[("global_top", seed)]
        assert all(top >= first[(s, seed)] - 1e-12 for s in ("stratified", "random", "cluster_random"))
    strat = [r for r in result["records"] if r["strategy"] == "stratified" and r["round"] == 1]
    assert all(len(r["clusters_selected"]) == 3 for r in strat)  # N/K from every cluster


def test_run_writes_json_plots_and_a_report_with_the_command(result: dict, tiny: dict):
    out = tiny["dir"] / "all"
    assert json.loads((out / "results.json").read_text())["records"] == result["records"]
    for png in ("curves.png", "groups.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "labelloop simulate --tiny" in report and "held-out accuracy" in report
    assert "Warning: the judge is R" not in report
    assert "## Does stratified beat the baselines? Paired tests after round 2" in report
    assert "| global_top |" in report and "p (Holm)" in report and "variance − floor" in report


def test_test_split_is_disjoint_from_the_pool_and_fixed_by_the_split_seed(tiny: dict):
    pool, test, skipped = load_split(_cfg(tiny, "x"))
    assert len(pool) == 40 and len(test) == 16 and skipped == []
    assert not {r["text"] for r in pool} & {r["text"] for r in test}
    again, _, _ = load_split(_cfg(tiny, "x"))
    other, _, _ = load_split(_cfg(tiny, "x", split_seed=5))
    assert [r["text"] for r in again] == [r["text"] for r in pool]
    assert [r["text"] for r in other] != [r["text"] for r in pool]


def test_rejections_shrink_the_labeled_set_and_profanity_judge_is_flagged(tiny: dict, starter_model: Path):
    res = run(_cfg(tiny, "reject", learner=str(starter_model), strategies=["random"], seeds=[3], rounds=1,
                   reject_rate=0.5, judge="profanity"))
    last = res["records"][-1]
    assert last["selected"] == 8 and last["accepted"] < 8 and last["labeled"] == last["accepted"]
    assert "Warning: the judge is R itself" in (tiny["dir"] / "reject" / "report.md").read_text()


def test_a_lookahead_selects_with_the_learner_of_the_round_before_the_last(tiny: dict, starter_model: Path):
    def run_with(lookahead: int) -> list[dict]:
        res = run(_cfg(tiny, f"ahead-{lookahead}", learner=str(starter_model), strategies=["stratified"], seeds=[0],
                       rounds=3, lookahead=lookahead))
        return [r for r in res["records"] if r["round"] > 0]

    fresh, stale = run_with(0), run_with(1)
    assert [r["selected_by"] for r in fresh] == [0, 1, 2]
    assert [r["selected_by"] for r in stale] == [0, 0, 1]  # round r+1 is scored by round r-1's learner
    assert fresh[0]["mean_r_selected"] == stale[0]["mean_r_selected"]  # round 1: the starter either way


@pytest.mark.parametrize(("kw", "message"), [
    ({"reference_col": "nope"}, "reference column 'nope' is missing"),
    ({"group_col": "nope"}, "group column 'nope' is missing"),
    ({"pool_size": 50}, "60 usable rows"),
    ({"strategies": ["best"]}, "--strategy best"),
    ({"reject_rate": 1.0}, "--reject-rate"),
    ({"judge": "oracle"}, "--judge 'oracle'"),
    ({"lookahead": -1}, "--lookahead"),
])
def test_bad_settings_are_clear_errors(tiny: dict, kw: dict, message: str):
    with pytest.raises(SimulateError, match=message):
        cfg = _cfg(tiny, "bad", **kw)
        cfg.check()
        load_split(cfg)


def test_cli_reports_a_missing_column_with_the_file(tiny: dict):
    got = CliRunner().invoke(main, ["simulate", "--data", str(tiny["data"]), "--reference-col", "target",
                                    "--out", str(tiny["dir"] / "cli")])
    assert got.exit_code == 1
    assert str(tiny["data"]) in got.output and "'target'" in got.output


# --- an experiment that can decide (#16): baselines, degenerate outputs, noise floor, examples, --test-data
def test_baselines_examples_and_the_noise_floor_are_in_results_and_report(result: dict, tiny: dict):
    base = result["baselines"]
    assert set(base) == {"copy_input", "constant"} and base["constant"]["text"]
    assert base["copy_input"]["degenerate_share"] <= 0.1  # copied inputs are sentences, not loops
    for r in result["records"]:
        assert 0 <= r["degenerate_share"] <= 1 and r["variance_floor"] > 0
    assert len(result["examples"]) == 8
    assert set(result["examples"][0]["final"]) == set(SimConfig(data="x").strategies)
    report = (tiny["dir"] / "all" / "report.md").read_text()
    assert "| copy input | constant |" in report and "## Example outputs" in report
    assert "noise floor of the variance" in report
    assert "MTLD is computed on the non-degenerate outputs only" in report


def test_the_report_warns_when_outputs_loop_or_a_baseline_wins():
    stats = {"chrf": 5.0, "bleu": 1.0, "offensive_share": 0.1, "error_ratio_variance": 0.004, "mtld": 5.0,
             "failure_rate": 0.9, "degenerate_share": 0.8, "variance_floor": 0.004, "groups": {}}
    records = [{"strategy": s, "seed": seed, "round": rnd, "labeled": 0, **stats}
               for s in ("stratified", "random") for seed in (0, 1) for rnd in (0, 1)]
    result = {"config": {"data": "d", "seeds": [0, 1], "rounds": 1, "budget": 8, "k": 2, "reject_rate": 0.0,
                         "reference_col": "reference", "learner": "m", "epochs": 1, "lr": 0.1},
              "records": records, "judge": {"same_as_r": True, "flags_test_inputs": 0.5,
                                            "flags_test_references": 0.1},
              "data": {"pool": 10, "test": 4, "subgroups": "g"}, "r": "profanity", "training": "t",
              "timings": {"total_s": 1.0}, "machine": {"cpu": "x"},
              "baselines": {"copy_input": {**stats, "chrf": 70.0}, "constant": {**stats, "text": "no"}}}
    report = simreport.markdown(result, "c.png", "g.png")
    assert "**Degenerate outputs**" in report and "starter 80%" in report
    assert "**The copy input baseline beats every learner on chrF** (70.0" in report
    assert "**Error-ratio variance within noise** for stratified, random" in report


def test_a_separate_test_file_is_the_test_split_and_leaves_the_pool(tiny: dict):
    rows = _rows(POOL, 80)
    test_file = _write_tsv(tiny["dir"] / "test.tsv",
                           [{**r, "group": "even"} for r in rows[50:80]])  # overlaps the pool file's rows 50-59
    pool, test, _ = load_split(_cfg(tiny, "x", test_data=str(test_file), test_size=30, pool_size=40))
    assert len(test) == 30 and {r["text"] for r in test} == {r["text"] for r in rows[50:80]}
    assert len(pool) == 40 and not {r["text"] for r in pool} & {r["text"] for r in test}


def test_the_bundled_judge_data_is_found_from_any_directory(tiny: dict, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = SimConfig(data=str(tiny["data"]))
    cfg.check()
    assert Path(cfg.judge_data) == STARTER
    bad = SimConfig(data=str(tiny["data"]), judge_data="nowhere.tsv")
    with pytest.raises(SimulateError, match="--judge-data nowhere.tsv: file not found"):
        bad.check()
def test_the_subgroup_plot_takes_seeds_with_equal_rates(tmp_path: Path):
    # the mean of three rates of 0.1 is 0.1 + 1e-17: its whisker must not come out negative
    records = [{"strategy": "stratified", "seed": seed, "round": 1, "groups": {"cluster 0": {"rate": 0.1}}}
               for seed in range(3)]
    assert simreport.plot_groups(records, tmp_path / "groups.png").is_file()


def test_the_paired_tests_compare_stratified_with_every_baseline(result: dict):
    tests = result["tests"]
    assert tests["method"]["seeds"] == 2
    against = {c["against"] for c in tests["comparisons"]}
    assert against == {"random", "global_top", "cluster_random"}
    for c in tests["comparisons"]:
        assert c["verdict"] in ("better", "worse", "no significant difference") or c["verdict"].startswith(
            "uninformative")
        if "p" in c:
            assert 0 < c["p"] <= c["p_holm"] <= 1 and c["low"] <= c["diff"] <= c["high"]
    assert set(tests["excess_variance"]) == set(SimConfig(data="x").strategies)


# --- --task counter-narration: its own failure rule and measures that do not reward copying
GROUPS = ["women", "immigrants", "muslims", "jews", "gay people", "disabled people"]
CLAIMS = ["are ruining this country", "should not be allowed to vote", "are all criminals", "are lazy and stupid",
          "do not belong here"]


def test_counter_narration_scores_relevance_and_copying_and_says_so(tmp_path: Path, starter_model: Path):
    rows = [{"hate": f"{g} {c} number {i}", "cn1": f"Most {g} work hard and contribute; claims that they {c} are"
             f" not supported by evidence {i}.", "cn2": f"Judging all {g} by a stereotype is unfair.", "target": g}
            for i, (g, c) in enumerate((g, c) for c in CLAIMS for g in GROUPS * 2)]
    data = tmp_path / "cn.csv"
    with data.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = SimConfig(data=str(data), task="counter_narration", text_col="hate", reference_col=["cn1", "cn2"],
                    group_col="target", out_dir=str(tmp_path / "out"), learner=str(starter_model),
                    judge_data=str(_write_tsv(tmp_path / "judge.tsv", _rows(STARTER, 20))),
                    cache_dir=str(tmp_path / "cache"), pool_size=40, test_size=18, rounds=1,
                    budget=8, k=2, seeds=[0, 1], epochs=1, strategies=["stratified", "random"], progress=False)
    res = run(cfg)
    copy = res["baselines"]["copy_input"]
    assert copy["copy_share"] == 1.0 and copy["failure_rate"] == 1.0  # a copy always fails, whatever its chrF
    assert copy["relevance"] > 0.99 and res["baselines"]["constant"]["copy_share"] < 0.2
    for r in res["records"]:
        assert 0 <= r["copy_share"] <= 1 and -1 <= r["relevance"] <= 1
    assert "chrf" not in {c["metric"] for c in res["tests"]["comparisons"]}  # chrF does not rank replies
    assert {"relevance", "copy_share"} <= {c["metric"] for c in res["tests"]["comparisons"]}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "(counter-narration: a reply to hateful text)" in report
    assert "**relevance**" in report and "**copy share**" in report and "off-topic" in report
    assert "| copy share (word 3-grams found in the input) (↓) |" in report


def test_counter_narration_instruction_wraps_the_learner_input():
    from loop.simulate import _learner_view

    template, seen = _learner_view(SimConfig(data="x", task="counter_narration", instruction=True))
    assert template.name == "counter_narration" and seen("X") == template.instruction.replace("{text}", "X")
    assert _learner_view(SimConfig(data="x", task="counter_narration"))[1]("X") == "X"
    with pytest.raises(SimulateError, match="--task 'poetry'"):
        SimConfig(data="x", task="poetry").check()


def test_a_pool_without_a_group_column_gets_tagged_groups(tiny: dict, starter_model: Path):
    from loop import groups

    rows = _rows(POOL, 60)
    for i, text in enumerate(["muslims are all terrorists and should leave", "the chinese are taking our jobs"] * 4):
        rows[i * 2]["text"] = text + f" {i}"  # test and pool both get items that name a group
    data = _write_tsv(tiny["dir"] / "untagged.tsv", rows)
    res = run(_cfg(tiny, "tagged", data=str(data), group_col=None, tag_groups=True, learner=str(starter_model),
                   strategies=["stratified", "random"], rounds=1, seeds=[0]))
    tags = set(res["data"]["tagger"]["tagged"])
    assert groups.NONE in tags and tags <= set(groups.bundled().examples)
    assert all(set(r["groups"]) == tags for r in res["records"])  # the tags, not the clusters, are the groups
    report = (tiny["dir"] / "tagged" / "report.md").read_text()
    assert "target-group tagger" in report and "held-out accuracy" in report
    assert "## Per-group failure rate after round 1" in report and "| none |" in report
    with pytest.raises(SimulateError, match="--tag-groups and --group-col"):
        _cfg(tiny, "x", tag_groups=True).check()
