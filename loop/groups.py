"""Tag the target group a text mentions, for data that has no group column.

A multinomial logistic regression over TF-IDF features (word 1-2-grams and character 3-5-grams) trained
on the bundled ToxiGen demonstrations (data/toxigen: 13 target groups, MIT), plus a `none` class of
texts that target no group in particular: the first `NONE_EXAMPLES` offensive texts of the bundled
ParaDetox starter file (data/paradetox/starter.tsv, disjoint from the pool; a few of them do name a
group, which the tagger learns as noise). Classes are weighted by their inverse frequency (lgbtq has
a third of the demonstrations), and a text is tagged with a group only when that group's probability
is at least `MIN_PROBABILITY`, else `none`: ParaDetox insults mostly name no group. TF-IDF rather
than the sentence embedder: it trains in seconds on 2 cores where embedding the examples takes a
minute, and the held-out accuracy says what it is worth. That accuracy is measured on a stratified
20% of the examples kept out of training; the tagger used afterwards is trained on all of them.
"""

from __future__ import annotations

import csv
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMONSTRATIONS = ROOT / "data" / "toxigen" / "demonstrations.tsv"
NONE_SOURCE = ROOT / "data" / "paradetox" / "starter.tsv"
NONE = "none"
NONE_EXAMPLES = 300
MIN_PROBABILITY = 0.5  # a text whose most probable group is less likely than this is tagged `none`


def _tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def bundled_examples() -> tuple[list[str], list[str]]:
    """(texts, groups): the ToxiGen demonstrations with their target group, then `none` examples."""
    demos = _tsv(DEMONSTRATIONS)
    others = [r["text"] for r in _tsv(NONE_SOURCE)[:NONE_EXAMPLES]]
    return [r["text"] for r in demos] + others, [r["group"] for r in demos] + [NONE] * len(others)


@dataclass
class Tagger:
    """A fitted tagger and how good it is on examples it never saw."""

    model: object  # sklearn Pipeline
    held_out_accuracy: float
    chance: float  # accuracy of always answering the most common class, on the same held-out examples
    held_out: int
    examples: dict[str, int] = field(default_factory=dict)  # per group

    def tag(self, texts: Sequence[str]) -> list[str]:
        """The most probable group of each text (`none` for a text that targets no group)."""
        if not len(texts):
            return []
        proba = self.model.predict_proba([str(t) for t in texts])
        classes = self.model.classes_[proba.argmax(axis=1)]
        return [str(g) if p >= MIN_PROBABILITY else NONE for g, p in zip(classes, proba.max(axis=1), strict=True)]

    def info(self) -> dict:
        """Facts for a report: accuracy, chance, held-out size, groups with their example counts."""
        return {"kind": f"tf-idf logistic regression (a group only at probability >= {MIN_PROBABILITY:g})",
                "trained_on": str(DEMONSTRATIONS.relative_to(ROOT)),
                "held_out_accuracy": self.held_out_accuracy, "chance": self.chance, "held_out": self.held_out,
                "examples": self.examples}


def _pipeline(seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2))
    return make_pipeline(features, LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced",
                                                            random_state=seed))


def train(texts: Sequence[str], groups: Sequence[str], *, seed: int = 0, held_out: float = 0.2) -> Tagger:
    """Fit on `texts` labelled with `groups`; accuracy measured on a stratified `held_out` share first."""
    from sklearn.model_selection import train_test_split

    texts, groups = [str(t) for t in texts], [str(g) for g in groups]
    if len(texts) != len(groups):
        raise ValueError(f"groups.train: {len(texts)} texts but {len(groups)} groups")
    counts = Counter(groups)
    if len(counts) < 2 or min(counts.values()) < 2:
        raise ValueError("groups.train needs at least 2 groups with at least 2 examples each")
    x_tr, x_te, y_tr, y_te = train_test_split(texts, groups, test_size=held_out, random_state=seed, stratify=groups)
    accuracy = float(np.mean(np.asarray(Tagger(_pipeline(seed).fit(x_tr, y_tr), 0, 0, 0).tag(x_te)) == y_te))
    chance = float(np.mean(np.asarray(y_te) == Counter(y_tr).most_common(1)[0][0]))
    return Tagger(_pipeline(seed).fit(texts, groups), accuracy, chance, len(y_te), dict(sorted(counts.items())))


@functools.cache
def bundled(seed: int = 0) -> Tagger:
    """The tagger on the bundled examples (seconds to train; once per process)."""
    return train(*bundled_examples(), seed=seed)
