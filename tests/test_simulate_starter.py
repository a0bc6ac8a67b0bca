"""Tests for simulate's own starter (--starter build:N, loop/starter.py) and its sweep of K (--k 4,8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.simulate import SimConfig, SimulateError, build_starter, load_split, run, seed_split
from tests.test_simulate import POOL, STARTER, _rows, _write_tsv

LEAK = "zqxvbnmwk"  # a word only test references carry: a token of its own if the tokenizer saw them
POOL_WORD = "plmoknijb"  # a word only pool references carry: the tokenizer must see those


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """100 rows with a group column; test references carry LEAK, pool references POOL_WORD."""
    d = tmp_path_factory.mktemp("simstarter")
    rows = [{**r, "group": "even" if i % 2 == 0 else "odd"} for i, r in enumerate(_rows(POOL, 100))]
    data = _write_tsv(d / "pool.tsv", rows)
    base = dict(data=str(data), group_col="group", judge_data=str(_write_tsv(d / "judge.tsv", _rows(STARTER, 20))),
                cache_dir=str(d / "cache"), pool_size=40, test_size=16, rounds=1, budget=8, k=2, seeds=[0, 1],
                epochs=1, strategies=["stratified", "random"], starter="build:30", starter_steps=8, progress=False)
    pool, test, _ = load_split(SimConfig(**base))  # the split depends on the row count, not the texts
    test_refs = {r["reference"] for r in test}
    pool_refs = {r["reference"] for r in pool}
    for r in rows:
        if r["reference"] in test_refs:
            r["reference"] += f" {LEAK}"
        elif r["reference"] in pool_refs:
            r["reference"] += f" {POOL_WORD}"
    _write_tsv(data, rows)
    return {"dir": d, "base": base}


def _cfg(marked: dict, out: str, **kw) -> SimConfig:
    return SimConfig(**{**marked["base"], "out_dir": str(marked["dir"] / out), **kw})


def test_the_built_starter_learns_from_a_seed_split_outside_pool_and_test_and_never_sees_the_test(marked: dict):
    from transformers import AutoTokenizer

    cfg = _cfg(marked, "built")
    pool, test, _ = load_split(cfg)
    seed = seed_split(cfg, pool, test)
    assert len(seed) == 30 and not {r["norm"] for r in seed} & {r["norm"] for r in pool + test}
    assert [r["text"] for r in seed] == [r["text"] for r in seed_split(cfg, pool, test)]  # drawn from split_seed

    res = run(cfg)
    built = res["starter"]
    assert built["pairs"] == 30 and built["steps"] == 8 and not built["cached"] and built["seconds"] > 0
    assert res["config"]["learner"] == built["path"] and res["config"]["starter"] == "build:30"
    tok = AutoTokenizer.from_pretrained(built["path"])
    assert len(tok.tokenize(f" {POOL_WORD}")) == 1  # pool references shaped the tokenizer
    assert len(tok.tokenize(f" {LEAK}")) > 1  # test references did not
    report = (marked["dir"] / "built" / "report.md").read_text()
    assert "Starter: built for this data by `labelloop simulate --starter build:30`" in report
    assert "on 30 pairs of" in report and "no test rows" in report

    again, facts = build_starter(cfg, seed, pool)  # same data, seed and size: the cache, no rebuild
    assert str(again) == built["path"] and facts["cached"]
    other, _ = build_starter(_cfg(marked, "x", starter_steps=9), seed, pool)
    assert other != again  # another build setting is another starter


@pytest.mark.parametrize(("kw", "message"), [
    ({"starter": "buld"}, "--starter 'buld': use pool, build"),
    ({"starter": "build:0"}, "--starter 'build:0'"),
    ({"starter": "build:45"}, "44 usable rows outside pool and test; --starter build:45 needs 45"),
])
def test_bad_starter_settings_are_clear_errors(marked: dict, kw: dict, message: str):
    cfg = _cfg(marked, "bad", **kw)
    with pytest.raises(SimulateError, match=message):
        cfg.check()
        pool, test, _ = load_split(cfg)
        seed_split(cfg, pool, test)


def test_the_report_names_a_given_starter(tmp_path: Path):
    from loop.simreport import _learner_words, _starter_line

    assert "the checkpoint given by `--learner`" in _starter_line({"starter": None})
    given = {"starter": None, "config": {"learner": "google/flan-t5-base"}}
    assert _learner_words(given, 200) == "The learner is `google/flan-t5-base`, trained on at most 200 pairs"
    built = {"starter": {"parameters": 1_612_000}, "config": {"learner": "cache/starter-x"}}
    assert _learner_words(built, 40).startswith("The learner is small (1.6 M parameters) and trained on at most 40")


# --- the sweep of K (the paper's question 3): stratified at each K against random, one Holm family
def test_a_sweep_of_k_runs_stratified_at_each_k_and_tests_each_against_random(marked: dict, starter_model: Path):
    cfg = _cfg(marked, "sweep", starter=None, learner=str(starter_model), k=2, k_sweep=[2, 3],
               strategies=["stratified", "random", "global_top"])
    res = run(cfg)
    sweep = res["k_sweep"]
    assert sweep["ks"] == [2, 3] and set(sweep["values"]) == {"K=2", "K=3", "random"}
    # K=2 is the main run's stratified: its per-item failure rate is the headline's
    main = [r for r in res["records"] if r["strategy"] == "stratified" and r["round"] == 1]
    assert sweep["values"]["K=2"]["failure_rate"] == pytest.approx(sum(r["failure_rate"] for r in main) / len(main))
    assert {r["strategy"] for r in res["records"]} == {"stratified", "random", "global_top"}  # no extra records
    tested = [c for c in sweep["comparisons"] if "p" in c]
    assert tested and {c["against"] for c in sweep["comparisons"]} == {"random"}
    assert {c["k"] for c in sweep["comparisons"]} == {2, 3}
    from loop.stats import holm

    assert [c["p_holm"] for c in tested] == holm([c["p"] for c in tested])  # one family over every K and metric
    report = (marked["dir"] / "sweep" / "report.md").read_text()
    assert "## How many clusters? Stratified at K = 2, 3 against random, after round 1" in report
    assert "| metric | K=2 | K=3 | random |" in report and "| failure rate (↓) | K=3 |" in report
    with pytest.raises(SimulateError, match="--k 2,3: the sweep tests stratified at each K against random"):
        _cfg(marked, "x", k_sweep=[2, 3], strategies=["stratified", "global_top"]).check()


def test_the_cli_takes_several_k(marked: dict, starter_model: Path):
    from click.testing import CliRunner

    from loop.cli import main

    got = CliRunner().invoke(main, ["simulate", "--data", marked["base"]["data"], "--k", "2,x"])
    assert got.exit_code == 2 and "expected comma-separated integers" in got.output
    got = CliRunner().invoke(main, ["simulate", "--data", marked["base"]["data"], "--k", "2,3", "--strategy",
                                    "stratified", "--out", str(marked["dir"] / "cli")])
    assert got.exit_code == 1 and "keep both in --strategy" in got.output


# --- the self-supervised starter (--starter pool) and a second learner outside the loop (--second-learner)
def test_the_pool_starter_learns_to_copy_pool_texts_with_no_labelled_pair_and_a_tokenizer_of_pool_texts(marked: dict):
    from transformers import AutoTokenizer

    cfg = _cfg(marked, "pool", starter="pool", starter_steps=6, starter_width=64)
    pool, test, _ = load_split(cfg)
    path, built = build_starter(cfg, [], pool)
    assert built["objective"] == "copy" and built["pairs"] == len(pool) == 40 and built["copy_pairs"] == 0
    assert built["width"] == 64 and built["arch"] == "bart" and not built["cached"]  # a BART unless told
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok.tokenize(f" {POOL_WORD}")) > 1  # only pool *references* carry it: the pool starter saw none
    assert len(tok.tokenize(f" {LEAK}")) > 1
    wider, _ = build_starter(_cfg(marked, "pool", starter="pool", starter_steps=6, starter_width=96), [], pool)
    assert wider != path  # the width is part of the cache key
    t5, t5_built = build_starter(_cfg(marked, "pool", starter="pool", starter_steps=6, starter_width=64,
                                      starter_arch="t5"), [], pool)
    assert t5 != path and t5_built["arch"] == "t5"  # and so is the architecture


def test_a_second_learner_is_trained_on_each_runs_acquired_pairs_and_tested_like_the_headline(marked: dict):
    cfg = _cfg(marked, "second", starter="pool", starter_steps=6, starter_width=96, second_learner="t5:64")
    res = run(cfg)
    second = res["second_learner"]
    assert second["learner"]["width"] == 64 and second["learner"]["objective"] == "copy"
    assert second["learner"]["arch"] == "t5" and res["starter"]["arch"] == "bart"  # another architecture
    assert set(second["values"]) == {"stratified", "random"}
    assert [v["seed"] for v in second["values"]["random"]] == [0, 1]
    assert all(v["pairs"] == 8 for vs in second["values"].values() for v in vs)  # one round of 8, none rejected
    assert {c["against"] for c in second["tests"]["comparisons"]} == {"random"}
    assert "chrf" in second["start"] and res["timings"]["second_learner_s"] > 0
    report = (marked["dir"] / "second" / "report.md").read_text()
    assert "## Does the acquired data help a model outside the loop?" in report
    assert "| metric | its start | stratified | random |" in report and "a T5 of 0.3 M parameters (width 64)" in report
    assert "(loop/starter.py): a BART of" in report
    assert "to copy each of the 40 pool texts to itself" in report


@pytest.mark.parametrize(("kw", "message"), [
    ({"second_learner": "width:50"}, "width:W needs W a multiple of 32, at least 64"),
    ({"second_learner": "width:64", "starter": None}, "a built second learner needs --starter"),
    ({"second_learner": "t5:40"}, "t5:W needs W a multiple of 32, at least 64"),
    ({"starter_arch": "gpt"}, "--starter-arch 'gpt': use t5 or bart"),
    ({"second_learner": "/nowhere"}, "--second-learner /nowhere: no checkpoint there"),
    ({"starter_width": 100}, "--starter-width must be a multiple of 32, at least 64"),
    ({"starter_width": 32}, "--starter-width must be a multiple of 32, at least 64"),
])
def test_bad_second_learner_and_width_settings_are_clear_errors(marked: dict, kw: dict, message: str):
    with pytest.raises(SimulateError, match=message):
        _cfg(marked, "bad", **kw).check()


# --- real groups that are not the clusters: --group-test (text + group, no reference)
def _group_file(marked: dict) -> Path:
    rows = [{"text": f"those {g} people are all idiots number {i}", "group": g, "stance": "hate"}
            for i in range(6) for g in ("women", "migrants", "jews")]
    rows += [{"text": f"{g} people are my neighbours {i}", "group": g, "stance": "neutral"}
             for i in range(3) for g in ("women", "migrants")]
    return _write_tsv(marked["dir"] / "groups.tsv", rows)


def test_every_final_learner_is_scored_on_texts_with_real_groups_and_tested_across_them(marked: dict,
                                                                                        starter_model: Path):
    cfg = _cfg(marked, "grouptest", starter=None, learner=str(starter_model), group_test=str(_group_file(marked)),
               group_test_where="stance=hate")
    res = run(cfg)
    gt = res["group_test"]
    assert gt["texts"] == 18 and set(gt["groups"]) == {"women", "migrants", "jews"}  # the neutral rows left out
    assert {g: v["n"] for g, v in gt["groups"].items()} == {"women": 6, "migrants": 6, "jews": 6}
    assert [v["seed"] for v in gt["values"]["stratified"]] == [0, 1] and gt["values"]["starter"][0]["seed"] is None
    one = gt["values"]["random"][0]
    assert 0 <= one["failure_rate"] <= 1 and set(one["groups"]) == {"women", "migrants", "jews"}
    assert {c["against"] for c in gt["tests"]["comparisons"]} == {"random"}
    assert not {c["metric"] for c in gt["tests"]["comparisons"]} & {"chrf"}  # no reference: no chrF
    report = (marked["dir"] / "grouptest" / "report.md").read_text()
    assert "## Quality across real groups (--group-test)" in report and "(rows with stance=hate): 18 texts" in report
    assert "jews 6, migrants 6, women 6" in report


@pytest.mark.parametrize(("kw", "message"), [
    ({"group_test": "/nowhere.tsv"}, "--group-test /nowhere.tsv: file not found"),
    ({"group_test_where": "stance"}, "--group-test-where 'stance': use COL=VALUE"),
])
def test_bad_group_test_settings_are_clear_errors(marked: dict, kw: dict, message: str):
    with pytest.raises(SimulateError, match=message):
        _cfg(marked, "bad", **{"group_test": str(_group_file(marked)), **kw}).check()


def test_a_group_test_without_its_group_column_or_rows_names_the_problem(marked: dict):
    from loop.simulate import load_group_test

    cfg = _cfg(marked, "bad", group_test=str(_group_file(marked)), group_test_group_col="target")
    with pytest.raises(SimulateError, match="--group-test: .*target"):
        load_group_test(cfg, [])
    cfg = _cfg(marked, "bad", group_test=str(_group_file(marked)), group_test_where="stance=none")
    with pytest.raises(SimulateError, match="no row left with stance=none outside the pool"):
        load_group_test(cfg, [])
