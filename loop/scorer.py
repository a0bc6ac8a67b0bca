"""The auxiliary model R: maps the learner's interim output to a score on the regulated attribute.

informativeness(x) = R(G(x), H). The offline default is `profanity` (alt-profanity-check's
calibrated linear model: the probability that a text is offensive). A scorer is any callable from a
list of texts to a list of floats in [0, 1]; `get_scorer(kind)` returns the named one.
"""

from __future__ import annotations

from collections.abc import Callable

Scorer = Callable[[list[str]], list[float]]


def profanity(texts: list[str]) -> list[float]:
    """Probability that each text is offensive (alt-profanity-check)."""
    if not texts:
        return []
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)]


SCORERS: dict[str, Scorer] = {"profanity": profanity}


def get_scorer(kind: str) -> Scorer:
    """The scorer registered under `kind`; a clear error lists the known kinds."""
    try:
        return SCORERS[kind]
    except KeyError:
        raise ValueError(f"unknown scorer {kind!r}; known: {', '.join(sorted(SCORERS))}") from None
