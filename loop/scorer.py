"""The auxiliary model R: maps the learner's interim output to a score on the regulated attribute.

informativeness(x) = R(G(x), H). A scorer is any callable from a list of texts to a list of floats in
[0, 1]. Kinds:

- `profanity`: alt-profanity-check's calibrated linear model (the offline default);
- `hf-classifier`: any Hugging Face sequence-classification model (name or path) and the label that
  counts as the attribute (the paper's "lightweight transformer with a linear layer");
- `embedding-probe`: a logistic-regression head on sentence embeddings, trained by `train_probe` from
  labelled texts and saved as JSON with the project; `load_probe` turns it back into a scorer;
- several attributes at once (the paper's open question 2): `combine` normalises each attribute over
  the candidates (rank or z-score) before weighting, so weights mean what they say; `weighted([(scorer,
  weight), ...])` is the plain weighted mean of raw probabilities (`scorer.normalise = "none"`).

`build_scorer(settings)` returns (signature, scorer): the signature names the kind, model, label,
weights and the probe file's content hash, so stored scores are reused exactly while R is unchanged.
Models load once per process.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Scorer = Callable[[list[str]], list[float]]
PROBE_FORMAT = "labelloop-embedding-probe/1"


def profanity(texts: list[str]) -> list[float]:
    """Probability that each text is offensive (alt-profanity-check)."""
    if not texts:
        return []
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)]


SCORERS: dict[str, Scorer] = {"profanity": profanity}
KINDS = ("profanity", "hf-classifier", "embedding-probe")


def get_scorer(kind: str) -> Scorer:
    """The scorer registered under `kind` (kinds that need no model); a clear error lists the known ones."""
    try:
        return SCORERS[kind]
    except KeyError:
        raise ValueError(f"unknown scorer {kind!r}; known: {', '.join(sorted(SCORERS))}") from None


# --- hf-classifier ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_classifier(model: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    local = Path(model).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local)
    net = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=local).eval()
    return net, tokenizer


def _label_index(config: Any, label: str | int, model: str) -> int:
    names = {str(v): int(k) for k, v in (config.id2label or {}).items()}
    if str(label) in names:
        return names[str(label)]
    if str(label).lstrip("-").isdigit() and 0 <= int(label) < config.num_labels:
        return int(label)
    raise ValueError(
        f"hf-classifier {model}: label {label!r} is not one of its labels ({', '.join(names) or 'none'}); "
        "set scorer.label to the label that counts as the attribute"
    )


def hf_classifier(model: str, label: str | int, *, batch_size: int = 32, max_length: int = 128) -> Scorer:
    """A scorer: probability of `label` under a sequence-classification model. A softmax over labels for
    a single-label head; a sigmoid of the label's own logit for a multi-label head (config.problem_type
    "multi_label_classification", as toxicity heads with several attributes are) or a single logit."""
    net, tokenizer = _load_classifier(str(model))
    index = 0 if net.config.num_labels == 1 else _label_index(net.config, label, str(model))
    independent = net.config.num_labels == 1 or net.config.problem_type == "multi_label_classification"

    def score(texts: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[i : i + batch_size]), truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
                logits = net(**enc).logits.float()
                probs = torch.sigmoid(logits[:, index]) if independent else logits.softmax(-1)[:, index]
                out.extend(float(p) for p in probs)
        return out

    return score


# --- embedding-probe -------------------------------------------------------------------------------
def train_probe(
    texts: Sequence[str],
    labels: Sequence[int | bool],
    out: str | Path,
    *,
    embed_model: str | None = None,
    c: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Train a linear head (logistic regression) on sentence embeddings of texts (label 1 = attribute
    present) and save it as JSON at `out`; returns the path. Held-out accuracy is stored with it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from loop import embed as embed_mod

    texts, y = [str(t) for t in texts], np.asarray([int(bool(v)) for v in labels])
    if len(texts) != len(y):
        raise ValueError(f"train_probe: {len(texts)} texts but {len(y)} labels")
    if len(set(y.tolist())) < 2 or min(np.bincount(y)) < 2:
        raise ValueError("train_probe needs at least 2 examples of each label (0 and 1)")
    model = embed_model or embed_mod.BUNDLED
    x = embed_mod.embed(texts, model=model, progress=progress)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    held_out = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr).score(x_te, y_te)
    head = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": PROBE_FORMAT, "embed_model": model, "coef": head.coef_[0].tolist(),
        "intercept": float(head.intercept_[0]), "examples": len(texts), "positives": int(y.sum()),
        "held_out_accuracy": float(held_out), "c": c, "seed": seed,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    return out


def read_labelled(path: str | Path, *, text_col: str = "text", label_col: str | None = "label",
                  negative_col: str | None = None) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels from a CSV/TSV: a label column, or (e.g. ParaDetox) a positive text column
    `text_col` (label 1) beside a negative one `negative_col` (label 0)."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix in (".tsv", ".tab") else ",",
                                quoting=csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL)
        cols = set(reader.fieldnames or [])
        need = {text_col, negative_col} if negative_col else {text_col, label_col}
        if not need <= cols:
            raise ValueError(f"{path}: needs columns {sorted(c for c in need if c)}; has {sorted(cols)}")
        texts, labels = [], []
        for line, row in enumerate(reader, start=2):
            if negative_col:
                for value, lab in ((row[text_col], 1), (row[negative_col], 0)):
                    if value:
                        texts.append(value)
                        labels.append(lab)
                continue
            raw = (row[label_col] or "").strip().lower()
            if raw not in ("0", "1", "true", "false"):
                raise ValueError(f"{path}:{line}: {label_col}={row[label_col]!r}; expected 0/1 or true/false")
            texts.append(row[text_col])
            labels.append(int(raw in ("1", "true")))
    return texts, labels


@functools.lru_cache(maxsize=8)
def _probe_payload(path: str, mtime_ns: int) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != PROBE_FORMAT:
        raise ValueError(f"{path}: not an embedding probe (format {data.get('format')!r}; expected {PROBE_FORMAT})")
    return data


def load_probe(path: str | Path) -> Scorer:
    """A scorer from a probe file written by `train_probe`: sigmoid(w . embed(text) + b)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding probe {path} not found; train one with loop.scorer.train_probe")
    data = _probe_payload(str(path.resolve()), path.stat().st_mtime_ns)  # re-read when the file changes
    coef, intercept, model = np.asarray(data["coef"], dtype=np.float32), float(data["intercept"]), data["embed_model"]

    def score(texts: list[str]) -> list[float]:
        from loop import embed as embed_mod

        if not texts:
            return []
        logits = embed_mod.embed(list(texts), model=model) @ coef + intercept
        return [1.0 / (1.0 + math.exp(-float(z))) for z in logits]

    return score


# --- several attributes ----------------------------------------------------------------------------
def weighted(parts: Sequence[tuple[Scorer, float]]) -> Scorer:
    """A scorer: the weighted mean of several attribute scorers (each runs once over the whole batch)."""
    parts = [(s, float(w)) for s, w in parts if float(w) > 0]
    if not parts:
        raise ValueError("weighted scorer needs at least one attribute with a weight > 0")
    total = sum(w for _, w in parts)

    def score(texts: list[str]) -> list[float]:
        if not texts:
            return []
        acc = np.zeros(len(texts))
        for scorer, w in parts:
            acc += w * np.asarray(scorer(list(texts)), dtype=float)
        return (acc / total).tolist()

    return score


NORMALISE = ("rank", "zscore", "none")


def normalise(values: Sequence[float], method: str) -> np.ndarray:
    """One attribute's scores on a common scale over the candidates: `rank` (the share of candidates
    scored lower, ties averaged, in [0, 1]), `zscore` (mean 0, standard deviation 1; all equal: 0) or
    `none` (the raw probabilities)."""
    x = np.asarray(values, dtype=float)
    if method == "none" or len(x) == 0:
        return x
    if method == "rank":
        from scipy.stats import rankdata

        return (rankdata(x, method="average") - 1) / max(len(x) - 1, 1)
    if method == "zscore":
        sd = x.std()
        return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    raise ValueError(f"unknown normalisation {method!r}; known: {', '.join(NORMALISE)}")


def combine(columns: Sequence[Sequence[float]], weights: Sequence[float], method: str) -> tuple[np.ndarray, np.ndarray]:
    """(informativeness, contributions): each attribute's scores normalised over the same candidates,
    then weighted (weights sum to 1). Uncalibrated probabilities from different models have different
    spreads; without normalising, the widest one decides the ranking whatever the weights say.
    `contributions[a]` is attribute a's weighted term per candidate; they sum to the informativeness."""
    w = np.asarray(weights, dtype=float)
    if len(w) != len(columns) or not len(w) or (w <= 0).any():
        raise ValueError("combine needs one weight > 0 per attribute")
    parts = np.stack([wi / w.sum() * normalise(col, method) for wi, col in zip(w, columns, strict=True)])
    return parts.sum(axis=0), parts


def contribution_rows(ledger: Any) -> list[dict]:
    """Per round and attribute of a several-attribute R: its weight, the mean raw score and the mean
    weighted contribution over the round's selected items, and its share of their informativeness (what
    `labelloop status` shows; written by loop.rounds.select_round)."""
    rows = []
    for r in ledger.rounds():
        stored = ledger.find_meta(f"round:{r['id']}:r_attributes")
        rows += [{"round": r["id"], **row} for row in json.loads(stored)] if stored else []
    return rows


# --- from settings ---------------------------------------------------------------------------------
def _file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def signature_one(kind: str, model: str | None = None, label: str | int | None = None) -> str:
    """The signature of one attribute (kind, model, label, probe content), without loading any model;
    errors name the missing field."""
    if kind == "profanity":
        return "profanity"
    if kind == "hf-classifier":
        if not model or label is None:
            raise ValueError("scorer kind 'hf-classifier' needs `model` (a HF name or path) and `label`")
        return f"hf-classifier:{model}#{label}"
    if kind == "embedding-probe":
        if not model:
            raise ValueError("scorer kind 'embedding-probe' needs `model`: the probe file from train_probe")
        if not Path(model).is_file():
            raise FileNotFoundError(f"embedding probe {model} not found; train one with loop.scorer.train_probe")
        return f"embedding-probe:{Path(model).name}@{_file_digest(model)}"
    raise ValueError(f"unknown scorer kind {kind!r}; known: {', '.join(KINDS)}")


def build_one(kind: str, model: str | None = None, label: str | int | None = None) -> tuple[str, Scorer]:
    """(signature, scorer) for one attribute; errors name the missing field."""
    signature = signature_one(kind, model, label)
    if kind == "profanity":
        return signature, profanity
    if kind == "hf-classifier":
        return signature, hf_classifier(model, label)
    return signature, load_probe(str(Path(model).resolve()))


def signature(settings: Any) -> str:
    """R's signature for ScorerSettings, the key its stored scores live under; loads no model, so a
    reader of stored scores (a top-up, status) finds exactly the rows the scorer wrote."""
    attributes = list(getattr(settings, "attributes", None) or [])
    if not attributes:
        return signature_one(settings.kind, getattr(settings, "model", None), getattr(settings, "label", None))
    method = getattr(settings, "normalise", "none")
    name = "weighted" if method == "none" else f"weighted[{method}]"  # scores over candidates, not raw means
    return name + "(" + ",".join(f"{signature_one(a.kind, a.model, a.label)}*{a.weight:g}" for a in attributes) + ")"


def build_scorer(settings: Any) -> tuple[str, Scorer]:
    """(signature, scorer) for ScorerSettings: one attribute, or the weighted mean of `attributes`."""
    attributes = list(getattr(settings, "attributes", None) or [])
    if not attributes:
        return build_one(settings.kind, getattr(settings, "model", None), getattr(settings, "label", None))
    built = [(build_one(a.kind, a.model, a.label), a.weight) for a in attributes]
    return signature(settings), weighted([(scorer, w) for (_, scorer), w in built])


def score_texts(scorer: Scorer, texts: list[str], *, batch_size: int = 256, progress: bool = False) -> list[float]:
    """Run a scorer over texts in batches with a progress bar; checks one finite score per text."""
    from tqdm.auto import tqdm

    out: list[float] = []
    with tqdm(total=len(texts), desc="score", disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            got = list(scorer(chunk))
            if len(got) != len(chunk) or not all(math.isfinite(g) for g in got):
                raise ValueError(f"scorer returned {len(got)} scores (finite expected) for {len(chunk)} texts")
            out.extend(float(g) for g in got)
            bar.update(len(chunk))
    return out

