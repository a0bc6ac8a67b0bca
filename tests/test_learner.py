"""Tests for loop.learner (the learner G) and scripts/build_starter_model.py, on a tiny model built here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from loop import learner

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_starter_model.py"
DATA = ROOT / "data" / "paradetox" / "starter.tsv"
POOL = ROOT / "data" / "paradetox" / "pool.tsv"
TINY_STEPS = 40


def _import_build_script():
    spec = importlib.util.spec_from_file_location("build_starter_model", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_script():
    return _import_build_script()


@pytest.fixture(scope="session")
def tiny_model(build_script, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("starter") / "tiny"
    return build_script.build(out, DATA, POOL, steps=TINY_STEPS, seed=0)


@pytest.fixture(scope="session")
def pairs(build_script) -> list[tuple[str, str]]:
    return build_script.read_pairs(POOL)[:24]


def test_build_writes_loadable_model_and_is_idempotent(build_script, tiny_model):
    weights = tiny_model / "model.safetensors"
    for name in ("config.json", "tokenizer.json", "labelloop.json"):
        assert (tiny_model / name).is_file(), name
    before = weights.stat().st_mtime_ns
    again = build_script.build(tiny_model, DATA, POOL, steps=TINY_STEPS, seed=0)
    assert again == tiny_model
    assert weights.stat().st_mtime_ns == before, "second build retrained instead of skipping"
    assert not list(tiny_model.parent.glob(".tiny.tmp-*")), "temp dir left behind"

    net, tok = learner.load(str(tiny_model))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    text = "you are such an idiot , really ."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok(text).input_ids[-1] == tok.eos_token_id
    assert not net.training


def test_load_is_cached(tiny_model):
    assert learner.load(str(tiny_model))[0] is learner.load(str(tiny_model) + "/")[0]


def test_generate_order_and_determinism(tiny_model, pairs):
    texts = [s for s, _ in pairs[:10]]
    out = learner.generate(str(tiny_model), texts, batch_size=4, max_new_tokens=12)
    assert isinstance(out, list) and len(out) == len(texts)
    assert all(isinstance(o, str) for o in out)
    assert learner.generate(str(tiny_model), texts, batch_size=4, max_new_tokens=12) == out
    rev = learner.generate(str(tiny_model), texts[::-1], batch_size=4, max_new_tokens=12)
    assert rev[::-1] == out
    a, b = texts[0], texts[-1]
    assert learner.generate(str(tiny_model), [a, b], max_new_tokens=12) == [out[0], out[-1]]
    assert learner.generate(str(tiny_model), [b, a], max_new_tokens=12) == [out[-1], out[0]]
    assert learner.generate(str(tiny_model), [], max_new_tokens=12) == []


def test_fine_tune_lowers_loss_and_keeps_base(tiny_model, pairs, tmp_path):
    base_net, _ = learner.load(str(tiny_model))
    snapshot = {k: v.detach().clone() for k, v in base_net.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    loss_before = learner.evaluate_loss(str(tiny_model), pairs)

    out_dir = tmp_path / "ft"
    metrics = learner.fine_tune(str(tiny_model), pairs, out_dir, epochs=3, lr=2e-3, batch_size=8, seed=0)
    assert {"train_loss", "pairs", "epochs", "seconds"} <= metrics.keys()
    assert metrics["pairs"] == len(pairs) and metrics["epochs"] == 3
    assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".ft.*")), "temp dir left behind"

    loss_after = learner.evaluate_loss(str(out_dir), pairs)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    assert len(learner.generate(str(out_dir), [pairs[0][0]], max_new_tokens=8)) == 1

    base_after, _ = learner.load(str(tiny_model))
    assert base_after is base_net
    for k, v in base_after.state_dict().items():
        assert torch.equal(v, snapshot[k]), f"base weights changed: {k}"
    assert learner.evaluate_loss(str(tiny_model), pairs) == pytest.approx(loss_before)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "fine_tune leaked global RNG state"


def test_fine_tune_is_deterministic(tiny_model, pairs, tmp_path):
    m1 = learner.fine_tune(str(tiny_model), pairs[:8], tmp_path / "a", epochs=1, batch_size=4, seed=3)
    m2 = learner.fine_tune(str(tiny_model), pairs[:8], tmp_path / "b", epochs=1, batch_size=4, seed=3)
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-5)


def test_fine_tune_overwrites_and_reloads(tiny_model, pairs, tmp_path):
    out_dir = tmp_path / "ft"
    learner.fine_tune(str(tiny_model), pairs[:8], out_dir, epochs=1, batch_size=8, seed=0)
    first = learner.load(str(out_dir))[0]
    learner.fine_tune(str(tiny_model), pairs[8:16], out_dir, epochs=1, batch_size=8, seed=1)
    assert learner.load(str(out_dir))[0] is not first, "stale cached model after rewrite"
    assert (out_dir / "model.safetensors").is_file()


def test_fine_tune_empty_raises(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        learner.fine_tune(str(tiny_model), [], tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError):
        learner.evaluate_loss(str(tiny_model), [])


def test_ct2_runtime_matches_hf_greedy_and_follows_retraining(tiny_model, pairs, tmp_path):
    texts = [s for s, _ in pairs] + [pairs[0][0]]  # a duplicate too
    cache = tmp_path / "ct2"
    reference = learner.generate(str(tiny_model), texts, batch_size=5, max_new_tokens=16)
    fast = learner.generate(str(tiny_model), texts, batch_size=5, max_new_tokens=16, runtime="ct2", cache_dir=cache)
    assert fast == reference
    assert len(list(cache.glob("*-float32"))) == 1
    int8 = learner.generate(str(tiny_model), texts, max_new_tokens=16, runtime="ct2-int8", cache_dir=cache)
    assert len(int8) == len(texts) and all(isinstance(o, str) for o in int8)

    out_dir = tmp_path / "ft"  # a retrained checkpoint gets its own conversion; the stale one is removed
    learner.fine_tune(str(tiny_model), pairs[:8], out_dir, epochs=1, batch_size=8, seed=0)
    first = learner.generate(str(out_dir), texts, max_new_tokens=16, runtime="ct2", cache_dir=cache)
    assert first == learner.generate(str(out_dir), texts, max_new_tokens=16)
    learner.fine_tune(str(tiny_model), pairs[8:16], out_dir, epochs=1, lr=3e-3, batch_size=8, seed=1)
    second = learner.generate(str(out_dir), texts, max_new_tokens=16, runtime="ct2", cache_dir=cache)
    assert second == learner.generate(str(out_dir), texts, max_new_tokens=16)
    assert len(list(cache.glob("*-float32"))) == 2  # tiny_model's and out_dir's latest


def test_a_built_bart_starter_runs_the_learners_one_code_path_with_ct2_matching_hf(pairs, tmp_path):
    """simulate's default starter is a BART: loading, fine-tuning and both runtimes work on it as on a T5, and
    CTranslate2's conversion (which reads BART settings transformers no longer writes) gives hf's strings."""
    from loop import starter

    model, tok, facts = starter.train(pairs, [t for p in pairs for t in p], steps=30, width=64, arch="bart")
    assert facts["arch"] == "bart" and type(model).__name__ == "BartForConditionalGeneration"
    path = starter.save(model, tok, tmp_path / "bart", facts)
    texts = [s for s, _ in pairs]
    cache = tmp_path / "ct2"
    assert learner.generate(str(path), texts, max_new_tokens=12, runtime="ct2", cache_dir=cache) == \
        learner.generate(str(path), texts, max_new_tokens=12)
    out_dir = tmp_path / "ft"
    learner.fine_tune(str(path), pairs[:8], out_dir, epochs=1, batch_size=8, seed=0)
    assert learner.generate(str(out_dir), texts, max_new_tokens=12, runtime="ct2", cache_dir=cache) == \
        learner.generate(str(out_dir), texts, max_new_tokens=12)
    with pytest.raises(ValueError, match="unknown starter architecture 'gpt'; known: t5, bart"):
        starter.train(pairs, texts, steps=1, arch="gpt")


def test_two_processes_converting_the_same_model_at_once_both_get_the_finished_conversion(tiny_model, tmp_path,
                                                                                          monkeypatch):
    """Two Ray actors start on the same new learner together: the one whose rename comes second finds the
    other's conversion in place (a non-empty directory) and uses it instead of failing its batch."""
    from loop import runtime

    cache, real_replace, raced = tmp_path / "ct2", runtime.os.replace, []

    def replace_after_a_rival(src, dst):
        if not raced:  # the rival finishes its whole conversion between our check and our rename
            raced.append(True)
            rival = runtime.convert(str(tiny_model), "ct2", cache)
            assert (rival / "model.bin").is_file()
        return real_replace(src, dst)

    monkeypatch.setattr(runtime.os, "replace", replace_after_a_rival)
    out = runtime.convert(str(tiny_model), "ct2", cache)
    assert raced and (out / "model.bin").is_file()
    assert [p.name for p in cache.iterdir()] == [out.name]  # the loser's temporary directory is gone


def test_unknown_runtime_lists_the_known_ones(tiny_model):
    with pytest.raises(ValueError, match="unknown runtime 'onnx'; known: hf, ct2, ct2-int8"):
        learner.generate(str(tiny_model), ["x"], runtime="onnx")


def test_fine_tune_with_dev_pairs_saves_the_best_epoch(tiny_model, pairs, tmp_path):
    metrics = learner.fine_tune(str(tiny_model), pairs[:16], tmp_path / "ft", epochs=3, lr=2e-3, batch_size=8,
                                seed=0, dev_pairs=pairs[16:], patience=3)
    assert len(metrics["dev_losses"]) == 3 and metrics["dev_pairs"] == len(pairs) - 16
    assert metrics["dev_loss"] == min(metrics["dev_losses"])
    assert metrics["dev_losses"][metrics["best_epoch"] - 1] == metrics["dev_loss"]
    assert learner.evaluate_loss(str(tmp_path / "ft"), pairs[16:]) == pytest.approx(metrics["dev_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="patience"):
        learner.fine_tune(str(tiny_model), pairs[:4], tmp_path / "x", dev_pairs=pairs[4:8], patience=0)


def test_a_hub_model_that_cannot_be_downloaded_is_a_permanent_error_naming_the_fix():
    import os
    import subprocess
    import sys

    # HF_HUB_OFFLINE is read when huggingface_hub is imported: a fresh process sees what a machine with no
    # network sees, without waiting for the hub client's retries
    code = ("from loop import learner\nfrom loop.errors import LearnerError, is_permanent\n"
            "try:\n    learner.load('google/flan-t5-base')\n"
            "except LearnerError as exc:\n    print(is_permanent(exc), exc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.stdout.startswith("True learner model 'google/flan-t5-base' cannot be loaded: "), run.stderr[-800:]
    assert "hub cannot be reached; set learner.base_model to a local checkpoint" in run.stdout


# --- lengths: one source and one target length for training, dev loss and generation ----------------------
LONG_TARGET = " ".join(["you are right , i was wrong ."] * 6)


def test_a_cut_target_loses_its_end_token_and_an_uncut_one_keeps_it(tiny_model):
    _, tok = learner.load(str(tiny_model))
    batch, labels = learner.encode_pairs(tok, [("you idiot", "you are wrong ."), ("you idiot", LONG_TARGET)], 128, 8)
    short, cut = labels[0][labels[0] != -100].tolist(), labels[1].tolist()
    assert short[-1] == tok.eos_token_id  # the model learns to stop where the target ends ...
    assert len(cut) == 8 and tok.eos_token_id not in cut  # ... and not where the length limit cut it
    assert cut == tok(text_target=LONG_TARGET).input_ids[:8]


def test_fine_tune_and_evaluate_loss_use_the_configured_lengths_and_warn_with_counts(tiny_model, pairs, tmp_path,
                                                                                      caplog):
    _, tok = learner.load(str(tiny_model))
    data = pairs[:6] + [(pairs[6][0], LONG_TARGET), (pairs[7][0], LONG_TARGET)]
    limit = max(len(tok(text_target=t).input_ids) for _, t in pairs[:6])  # only the two long targets are cut
    with caplog.at_level("WARNING", logger="loop.learner"):
        learner.fine_tune(str(tiny_model), data, tmp_path / "ft", epochs=1, batch_size=4, max_target_tokens=limit)
    assert f"fine_tune: 2 of 8 targets are longer than max_target_tokens={limit} tokens and are cut" in caplog.text
    long_only = data[6:]
    assert learner.evaluate_loss(str(tiny_model), long_only, max_target_tokens=12) != pytest.approx(
        learner.evaluate_loss(str(tiny_model), long_only, max_target_tokens=128))
    caplog.clear()
    with caplog.at_level("WARNING", logger="loop.learner"):
        learner.generate(str(tiny_model), [s for s, _ in data], max_source_tokens=3, max_new_tokens=4)
    assert "generate: 8 of 8 sources are longer than max_source_tokens=3 tokens and are cut" in caplog.text


def test_the_target_length_setting_reads_its_old_name():
    from loop.config import load_settings

    assert load_settings().learner.max_target_tokens == 128
    assert load_settings(learner__max_new_tokens=16).learner.max_target_tokens == 16


# --- the training schedule: warm-up and decay, no weight decay on norms or biases ---------------------------
def test_weight_decay_spares_norms_and_biases(tiny_model):
    net, _ = learner.load(str(tiny_model))
    decay, no_decay = learner.param_groups(net, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    norms = {n for n, _ in net.named_parameters() if "layer_norm" in n}
    assert norms and norms <= spared
    assert not any("norm" in names[id(p)] or names[id(p)].endswith(".bias") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_the_learning_rate_warms_up_then_decays_to_zero():
    factors = [learner.lr_factor(step, 10, 0.2) for step in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]  # two warm-up steps, then the peak
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False)) and factors[-1] == pytest.approx(1 / 8)
    assert learner.lr_factor(10, 10, 0.2) == 0.0
    assert learner.lr_factor(0, 10, 0.0) == 1.0  # no warm-up: decay from the first step


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_fine_tune_with_each_optimizer_lowers_the_loss(tiny_model, pairs, tmp_path, optimizer):
    before = learner.evaluate_loss(str(tiny_model), pairs)
    metrics = learner.fine_tune(str(tiny_model), pairs, tmp_path / optimizer, epochs=3, lr=2e-3, batch_size=8,
                                optimizer=optimizer)
    assert metrics["optimizer"] == optimizer
    assert learner.evaluate_loss(str(tmp_path / optimizer), pairs) < before - 0.05
