"""Tests that decide between two strategies of a simulation: paired bootstrap, sign test, Holm.

A strategy is compared with another on the same test items under the same seeds, so the comparison
is paired. The bootstrap pools the seeds: each test item's value is averaged over the seeds first,
then items are resampled with replacement (2,000 times by default) and the difference of the two
strategies' means is recomputed on every resample. Its 95% interval is the 2.5th-97.5th percentiles;
its two-sided p-value is the share of resampled differences at least as far from the observed one as
the observed one is from 0 (the bootstrap distribution shifted to the null). The sign test over seeds
checks the other source of variance, the seeds (a seed's model can be better on every item at once);
with 5 seeds its smallest two-sided p-value is 1/16, so it checks the direction, it does not decide.
Holm's step-down correction keeps the chance of any false "better/worse" over all comparisons at 5%.

The error-ratio variance is corrected for its binomial noise floor (what equal groups would show by
sampling alone, `metrics.variance_floor`): the excess variance = variance - floor, per seed, then
averaged over seeds; bootstrapped over items the same way.

Arrays in, plain numbers out, so every function can be checked on synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np

N_BOOT = 2000
ALPHA = 0.05

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (values (seeds, items), weights (B, items)) -> (B,)


def mean_statistic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean over items (each averaged over seeds first) under resampling weights (B, items)."""
    per_item = np.asarray(values, dtype=float).reshape(-1, weights.shape[1]).mean(axis=0)
    return weights @ per_item / weights.sum(axis=1)


def membership(groups: Sequence[object]) -> tuple[list[str], np.ndarray]:
    """(group names, items x groups 0/1 matrix); an item whose group is a list is in each of them."""
    from loop.metrics import _memberships

    per_item = [list(dict.fromkeys(_memberships(g))) for g in groups]
    names = sorted({g for gs in per_item for g in gs})
    index = {g: j for j, g in enumerate(names)}
    m = np.zeros((len(per_item), len(names)))
    for i, gs in enumerate(per_item):
        m[i, [index[g] for g in gs]] = 1.0
    return names, m


def excess_variance_statistic(groups: Sequence[object]) -> Statistic:
    """A statistic: the error-ratio variance across `groups` minus its noise floor, per seed, averaged
    over seeds; values are per-item failures (seeds, items). With unit weights it equals
    `metrics.error_ratio_variance - metrics.variance_floor` of `metrics.group_rates`."""
    _, m = membership(groups)

    def statistic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        failed = np.asarray(values, dtype=float).reshape(-1, weights.shape[1])
        n = weights @ m  # (B, G) items per group in each resample
        present = n > 0  # a small group can be missing from a resample: left out of that resample's variance
        out = np.zeros(weights.shape[0])
        for f in failed:
            fails = weights @ (m * f[:, None])
            rate = np.where(present, fails / np.where(present, n, 1), np.nan)
            g = present.sum(axis=1)
            p = fails.sum(axis=1) / n.sum(axis=1)
            floor = (1 - 1 / g) * np.nanmean(np.where(present, p[:, None] * (1 - p[:, None]) / np.where(present, n, 1),
                                                      np.nan), axis=1)
            out += np.nanvar(rate, axis=1) - floor
        return out / len(failed)

    return statistic


def _weights(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """Resampling weights: how often each item is drawn in each of n_boot resamples (rows sum to n_items)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot).astype(float)


def bootstrap(values: np.ndarray, statistic: Statistic = mean_statistic, *, n_boot: int = N_BOOT,
              seed: int = 0) -> dict[str, float]:
    """One strategy's statistic with its 95% bootstrap interval over items: {value, low, high}."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    observed = float(statistic(values, np.ones((1, values.shape[1])))[0])
    boot = _centred(statistic(values, _weights(values.shape[1], n_boot, seed)), observed)
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan)
    return {"value": observed, "low": float(low), "high": float(high)}


def _centred(boot: np.ndarray, observed: float) -> np.ndarray:
    """The finite bootstrap values moved so that their mean is the observed value. The shift is about 0 for
    a mean; for a variance across groups, resampling adds each group's sampling noise, so the distribution
    sits above the observed value by about the noise floor, and an uncorrected percentile interval can
    miss the observed value altogether."""
    finite = boot[np.isfinite(boot)]
    return finite - (finite.mean() - observed) if len(finite) else finite


def paired_bootstrap(a: np.ndarray, b: np.ndarray, statistic: Statistic = mean_statistic, *, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict[str, float]:
    """Statistic(a) - statistic(b) on the same resamples of the items: {diff, low, high, p}.

    `a` and `b` are (seeds, items) or (items,), aligned item by item (and seed by seed)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: shapes differ ({a.shape} and {b.shape}); pair by seed and item")
    if a.shape[1] < 2:
        raise ValueError("paired_bootstrap needs at least two items")
    ones = np.ones((1, a.shape[1]))
    observed = float(statistic(a, ones)[0] - statistic(b, ones)[0])
    w = _weights(a.shape[1], n_boot, seed)
    diff = statistic(a, w) - statistic(b, w)
    diff = _centred(diff, observed)
    low, high = np.percentile(diff, [2.5, 97.5])
    extreme = np.sum(np.abs(diff - observed) >= abs(observed) - 1e-12)
    return {"diff": observed, "low": float(low), "high": float(high), "p": float((1 + extreme) / (1 + len(diff)))}


def sign_test(differences: Sequence[float]) -> dict[str, float]:
    """Exact two-sided sign test over seeds: {positive, negative, p}; ties (a zero difference) are dropped."""
    d = np.asarray(differences, dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return {"positive": 0, "negative": 0, "p": 1.0}
    tail = sum(comb(n, k) for k in range(min(pos, neg) + 1)) / 2**n
    return {"positive": pos, "negative": neg, "p": float(min(1.0, 2 * tail))}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest times (m - i), made
    monotone, capped at 1. Rejecting where adjusted < alpha keeps the family-wise error at alpha."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# what a comparison tests: (name, per-item key, label, True when higher is better); "excess_variance" is
# the error-ratio variance minus its noise floor over the groups, from the per-item failures
COMPARED = [
    ("chrf", "chrf", "sentence chrF (mean over items)", True),
    ("failure_rate", "failed", "failure rate", False),
    ("offensive_share", "offensive", "share judged offensive", False),
    ("relevance", "relevance", "relevance to the input (embedding cosine)", True),
    ("copy_share", "copy", "copy share (output word 3-grams found in the input)", False),
    ("excess_variance", "failed", "error-ratio variance minus its noise floor", False),
]
DEGENERATE_LIMIT = 0.5  # above this share of loops or empty outputs, task scores describe the loops


def _uninformative(name: str, a: np.ndarray, b: np.ndarray, degenerate: dict[str, float], groups: int) -> str | None:
    """Why a comparison cannot say anything (outputs collapsed, no variation, a variance 0 by
    construction), or None when it can."""
    collapsed = {s: v for s, v in degenerate.items() if v > DEGENERATE_LIMIT}
    if collapsed:
        return "outputs collapsed (" + ", ".join(f"{s} {v:.0%} degenerate" for s, v in collapsed.items()) + ")"
    if name == "excess_variance":
        if groups < 2:
            return "one group only"
        for side in (a, b):
            rates = side.mean(axis=1)
            if np.all(rates >= 1):
                return "every item fails (the variance is 0 by construction)"
            if np.all(rates <= 0):
                return "no item fails (the variance is 0 by construction)"
        return None
    both = np.concatenate([a.ravel(), b.ravel()])
    if np.all(both == both[0]):
        return f"every item scores {both[0]:g} under both"
    return None


def compare(per_item: dict[str, dict[str, np.ndarray]], groups: Sequence[object], *, reference: str = "stratified",
            n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """`reference` against every other strategy on every compared metric the per-item data has.

    per_item: {strategy: {per-item key: (seeds, items) array, ..., "degenerate": (seeds, items)}}, seeds in
    the same order for every strategy. Each comparison: metric, label, against, diff (reference - other),
    low, high, p, p_holm, sign test over seeds, and a verdict: "better", "worse", "no significant
    difference" (Holm-adjusted p >= 0.05) or "uninformative: <why>" (no test made; not in Holm's family)."""
    n_groups = membership(groups)[1].shape[1]
    out: list[dict] = []
    ref = per_item[reference]
    for other in sorted(s for s in per_item if s != reference):
        deg = {s: float(np.mean(per_item[s]["degenerate"])) for s in (reference, other) if "degenerate" in per_item[s]}
        for name, key, label, higher in COMPARED:
            if key not in ref or key not in per_item[other]:
                continue
            a, b = np.atleast_2d(ref[key]).astype(float), np.atleast_2d(per_item[other][key]).astype(float)
            row = {"metric": name, "label": label, "against": other, "higher_better": higher}
            why = _uninformative(name, a, b, deg, n_groups)
            if why:
                out.append({**row, "verdict": f"uninformative: {why}"})
                continue
            stat = statistic_of(name, groups)
            ones = np.ones((1, a.shape[1]))
            per_seed = [float(stat(a[s:s + 1], ones)[0] - stat(b[s:s + 1], ones)[0]) for s in range(len(a))]
            out.append({**row, **paired_bootstrap(a, b, stat, n_boot=n_boot, seed=seed), "sign": sign_test(per_seed)})
    return holm_verdicts(out)


def holm_verdicts(comparisons: list[dict]) -> list[dict]:
    """Holm's correction over every tested comparison given (those with a "p"; uninformative ones keep
    their verdict), setting p_holm and the verdict in place; returns the same list. Call it once over a
    whole family (e.g. several calls of `compare`) to correct for all of its tests together."""
    tested = [c for c in comparisons if "p" in c]
    for c, adjusted in zip(tested, holm([c["p"] for c in tested]), strict=True):
        c["p_holm"] = adjusted
        if adjusted >= ALPHA:
            c["verdict"] = "no significant difference"
        else:
            c["verdict"] = "better" if (c["diff"] > 0) == c["higher_better"] else "worse"
    return comparisons


def statistic_of(name: str, groups: Sequence[object]) -> Statistic:
    """The statistic a compared metric is tested on: the excess variance over `groups`, else the mean."""
    return excess_variance_statistic(groups) if name == "excess_variance" else mean_statistic


def excess_variance(per_item: dict[str, dict[str, np.ndarray]], groups: Sequence[object], *, n_boot: int = N_BOOT,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Every strategy's error-ratio variance minus its noise floor (mean over seeds), with a 95% bootstrap
    interval over items: {strategy: {value, low, high}}; empty with fewer than two groups (nothing to vary)."""
    if membership(groups)[1].shape[1] < 2:
        return {}
    stat = excess_variance_statistic(groups)
    return {s: bootstrap(np.atleast_2d(d["failed"]), stat, n_boot=n_boot, seed=seed)
            for s, d in sorted(per_item.items()) if "failed" in d}
