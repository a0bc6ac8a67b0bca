"""The auxiliary model R: each kind (profanity, hf-classifier, embedding-probe) and weighted attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loop import scorer
from loop.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "data" / "paradetox" / "starter.tsv"
OFFENSIVE = ["you are a fucking idiot", "shut up you stupid moron", "this is bullshit , damn it"]
NEUTRAL = ["thank you for the help", "the meeting is at noon", "i like this song a lot"]


def _tiny_bert(out: Path, labels: list[str], **config) -> Path:
    """A tiny random BERT sequence classifier with a word-level tokenizer, saved locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({w for t in OFFENSIVE + NEUTRAL for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **config)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("clf") / "tiny-bert", ["neutral", "offensive"])


def test_a_multi_label_head_scores_each_label_by_its_own_sigmoid(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = _tiny_bert(tmp_path / "multi", ["toxic", "insult", "threat"], problem_type="multi_label_classification")
    texts = OFFENSIVE + NEUTRAL
    net = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = net(**enc).logits
    for i, label in enumerate(["toxic", "insult", "threat"]):
        got = np.array(scorer.hf_classifier(str(path), label)(texts))
        assert np.allclose(got, torch.sigmoid(logits[:, i]).numpy(), atol=1e-5), label
    # labels are not exclusive: a text can be toxic and an insult at once; a softmax would force them to sum to 1
    assert not np.allclose(sum(np.array(scorer.hf_classifier(str(path), n)(texts)) for n in ("toxic", "insult",
                                                                                             "threat")), 1.0)


@pytest.mark.parametrize("method", ["rank", "zscore", "none"])
def test_normalise_puts_an_attribute_on_a_common_scale(method):
    values = [0.01, 0.02, 0.9, 0.02]
    got = scorer.normalise(values, method)
    if method == "rank":  # the share of candidates scored lower, ties averaged
        assert got.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5])
    elif method == "zscore":
        assert got.mean() == pytest.approx(0) and got.std() == pytest.approx(1)
    else:
        assert got.tolist() == values
    assert scorer.normalise([0.3, 0.3], "zscore").tolist() == [0.0, 0.0]


def test_weights_decide_even_when_one_attribute_has_a_much_wider_spread():
    # attribute A spreads over [0, 0.9], attribute B over [0.48, 0.52] and ranks the candidates the other way;
    # B weighs 3x A. The raw mean follows A's spread; normalised over the candidates, B's weight wins.
    a = [0.0, 0.3, 0.6, 0.9]
    b = [0.52, 0.51, 0.49, 0.48]
    raw, _ = scorer.combine([a, b], [1.0, 3.0], "none")
    assert int(np.argmax(raw)) == 3  # A decides alone, whatever the weights say
    for method in ("rank", "zscore"):
        total, parts = scorer.combine([a, b], [1.0, 3.0], method)
        assert int(np.argmax(total)) == 0, method
        assert np.allclose(parts.sum(axis=0), total)
    with pytest.raises(ValueError, match="one weight > 0 per attribute"):
        scorer.combine([a], [1.0, 2.0], "rank")


def test_profanity_ranks_offensive_above_neutral():
    offensive, neutral = scorer.profanity([OFFENSIVE[0], NEUTRAL[0]])
    assert 0 <= neutral < offensive <= 1 and scorer.profanity([]) == []


def test_hf_classifier_scores_the_named_label(tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sig, score = scorer.build_one("hf-classifier", str(tiny_classifier), "offensive")
    assert sig == f"hf-classifier:{tiny_classifier}#offensive"
    texts = OFFENSIVE + NEUTRAL
    got = np.array(score(texts))
    net = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    enc = AutoTokenizer.from_pretrained(tiny_classifier)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = net(**enc).logits.softmax(-1)[:, 1].numpy()
    assert np.allclose(got, expected, atol=1e-5)
    other = np.array(scorer.hf_classifier(str(tiny_classifier), "neutral", batch_size=2)(texts))
    assert np.allclose(got + other, 1.0, atol=1e-5)  # batching does not change scores; labels are exclusive
    assert np.allclose(scorer.hf_classifier(str(tiny_classifier), "1")(texts), got, atol=1e-6)  # label by index


def test_hf_classifier_unknown_label_names_the_known_ones(tiny_classifier):
    with pytest.raises(ValueError, match=r"label 'toxic' is not one of its labels \(neutral, offensive\)"):
        scorer.hf_classifier(str(tiny_classifier), "toxic")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    texts, labels = scorer.read_labelled(STARTER, text_col="text", negative_col="reference")
    out = tmp_path_factory.mktemp("proj") / "probes" / "toxic.json"
    # the first 300 rows: 300 toxic + 300 neutral texts; the rest of the file stays unseen
    return scorer.train_probe(texts[:600], labels[:600], out, seed=0)


def test_embedding_probe_trains_saves_and_separates_unseen_texts(probe):
    data = json.loads(probe.read_text())
    assert data["format"] == scorer.PROBE_FORMAT and len(data["coef"]) == 384
    assert data["examples"] == 600 and data["positives"] == 300 and data["held_out_accuracy"] > 0.75
    texts, labels = scorer.read_labelled(STARTER, text_col="text", negative_col="reference")
    unseen, truth = texts[1000:1200], np.array(labels[1000:1200])
    got = np.array(scorer.load_probe(probe)(unseen))
    assert ((got > 0.5) == truth).mean() > 0.75
    assert got[truth == 1].mean() > got[truth == 0].mean() + 0.3
    assert scorer.load_probe(probe)([]) == []


def test_embedding_probe_signature_follows_the_file(probe, tmp_path):
    copy = tmp_path / "probe.json"
    copy.write_bytes(probe.read_bytes())
    sig, _ = scorer.build_one("embedding-probe", str(copy))
    data = json.loads(copy.read_text())
    data["intercept"] += 1.0
    copy.write_text(json.dumps(data))
    sig2, score2 = scorer.build_one("embedding-probe", str(copy))
    assert sig != sig2  # a retrained probe re-scores; the loaded head follows the file too
    assert score2(["hello there"])[0] > scorer.load_probe(probe)(["hello there"])[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.json", "not found"),
        (lambda p: (p / "x.json").write_text('{"format": "other"}') and p / "x.json", "not an embedding probe"),
    ],
)
def test_bad_probe_files_are_named(tmp_path, make, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        scorer.load_probe(make(tmp_path))


def test_train_probe_rejects_one_sided_labels(tmp_path):
    with pytest.raises(ValueError, match="at least 2 examples of each label"):
        scorer.train_probe(["a", "b", "c"], [1, 1, 1], tmp_path / "p.json")


def test_read_labelled_from_a_label_column_and_errors(tmp_path):
    path = tmp_path / "attr.csv"
    path.write_text("text,label\nyou idiot,1\nhello,0\nfine,true\n")
    assert scorer.read_labelled(path) == (["you idiot", "hello", "fine"], [1, 0, 1])
    path.write_text("text,label\nyou idiot,maybe\n")
    with pytest.raises(ValueError, match=r"attr.csv:2: label='maybe'"):
        scorer.read_labelled(path)
    with pytest.raises(ValueError, match="needs columns"):
        scorer.read_labelled(path, label_col="toxic")


def test_weighted_attributes_are_the_weighted_mean(probe):
    texts = OFFENSIVE + NEUTRAL
    a, b = np.array(scorer.profanity(texts)), np.array(scorer.load_probe(probe)(texts))
    combined = scorer.weighted([(scorer.profanity, 1.0), (scorer.load_probe(probe), 3.0)])
    assert np.allclose(combined(texts), (a + 3 * b) / 4)
    settings = load_settings(scorer__attributes=[{"kind": "profanity", "weight": 1},
                                                 {"kind": "embedding-probe", "model": str(probe), "weight": 3}])
    sig, built = scorer.build_scorer(settings.scorer)
    assert sig.startswith("weighted[rank](profanity*1,embedding-probe:toxic.json@") and sig.endswith("*3)")
    settings.scorer.normalise = "none"
    sig, built = scorer.build_scorer(settings.scorer)
    assert sig.startswith("weighted(profanity*1,embedding-probe:toxic.json@") and sig.endswith("*3)")
    assert np.allclose(built(texts), (a + 3 * b) / 4)
    with pytest.raises(ValueError, match="at least one attribute"):
        scorer.weighted([])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scorer__kind": "hf-classifier"}, "needs `model`"),
        ({"scorer__kind": "hf-classifier", "scorer__model": "x"}, "needs `label`"),
        ({"scorer__attributes": [{"kind": "embedding-probe"}]}, "scorer.attributes.0: .*needs `model`"),
        ({"scorer__kind": "nope"}, "scorer.kind"),
        ({"scorer__attributes": [{"kind": "profanity", "weight": 0}]}, "weight"),
    ],
)
def test_scorer_settings_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_score_texts_batches_and_checks_the_scorer():
    texts = [f"text {i}" for i in range(7)]
    assert scorer.score_texts(lambda xs: [len(x) / 10 for x in xs], texts, batch_size=3) == [0.6] * 7
    with pytest.raises(ValueError, match="returned 1 scores"):
        scorer.score_texts(lambda xs: [0.5], texts, batch_size=3)
    with pytest.raises(ValueError, match="unknown scorer kind 'nope'"):
        scorer.build_one("nope")
