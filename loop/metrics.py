"""The paper's evaluation metrics for a learner's outputs on a test split.

- task score: corpus chrF and BLEU against the references (sacrebleu); an item may have several
  references (multi-reference chrF/BLEU; sentence chrF takes the best-matching one);
- attribute adherence: share of outputs a judge scores as offensive (score >= a threshold);
- error-ratio variance: per subgroup, the failure rate (judge says offensive, or sentence chrF under a
  threshold), then the population variance of those rates across subgroups (an item in several
  subgroups counts in each);
- lexical diversity: MTLD (lexicalrichness, threshold 0.72) over the non-degenerate outputs together (a
  greedy loop would otherwise make MTLD measure the loops, not diversity; the share left out is the
  degenerate share);
- degenerate outputs: share that are empty or loop (a word or short phrase repeated back to back), which
  no task score above should be read without;
- for counter-narration, measures that do not reward copying the input: relevance to the input (cosine
  of sentence embeddings, computed by the caller) and the copy share (share of an output's word 3-grams
  found in its input); a reply fails there when judged offensive, mostly copied, off-topic or degenerate,
  not by chrF against one human reply (a second human reply scores about 25 against the first);
- the error-ratio variance's noise floor: what it would be on average if every subgroup failed equally
  often (binomial sampling alone), so that a variance near it is not read as a difference.

Functions take plain lists and return plain numbers / dicts, so they can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MTLD_THRESHOLD = 0.72


def _same_length(what: str, **columns: Sequence) -> int:
    sizes = {name: len(col) for name, col in columns.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{what}: inputs differ in length ({', '.join(f'{k}={v}' for k, v in sizes.items())})")
    return next(iter(sizes.values()), 0)


References = Sequence[str] | Sequence[Sequence[str]]


def _reference_lists(references: References) -> list[list[str]]:
    """Each item's references as a non-empty list (one string is one reference)."""
    out = [[str(r)] if isinstance(r, str) else [str(x) for x in r] for r in references]
    empty = [i for i, refs in enumerate(out) if not refs]
    if empty:
        raise ValueError(f"references: item {empty[0]} has none")
    return out


def task_scores(outputs: Sequence[str], references: References) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu defaults, 0-100) of outputs against each item's reference(s)."""
    import sacrebleu

    if _same_length("task_scores", outputs=outputs, references=references) == 0:
        raise ValueError("task_scores needs at least one (output, reference) pair")
    lists = _reference_lists(references)
    width = max(len(refs) for refs in lists)
    # sacrebleu takes reference streams; an item with fewer references leaves its later streams None
    streams = [[refs[k] if k < len(refs) else None for refs in lists] for k in range(width)]
    hyps = [str(o) for o in outputs]
    chrf, bleu = sacrebleu.corpus_chrf(hyps, streams), sacrebleu.corpus_bleu(hyps, streams)
    return {"chrf": float(chrf.score), "bleu": float(bleu.score)}


def sentence_chrf(outputs: Sequence[str], references: References) -> list[float]:
    """Sentence-level chrF (0-100) of each output against its reference(s) (for per-item failures)."""
    from sacrebleu.metrics import CHRF

    _same_length("sentence_chrf", outputs=outputs, references=references)
    metric = CHRF()
    return [float(metric.sentence_score(str(o), refs).score)
            for o, refs in zip(outputs, _reference_lists(references), strict=True)]


def offensive_share(judge_scores: Sequence[float], threshold: float = 0.5) -> float:
    """Share of outputs whose judge score is at or above `threshold` (lower is better)."""
    scores = np.asarray(judge_scores, dtype=float)
    if scores.size == 0:
        raise ValueError("offensive_share needs at least one judge score")
    return float((scores >= threshold).mean())


def failures(
    judge_scores: Sequence[float], chrf: Sequence[float], *, judge_threshold: float = 0.5, chrf_threshold: float = 30.0
) -> list[bool]:
    """Per output: failed when the judge says offensive (score >= judge_threshold) or chrF < chrf_threshold."""
    _same_length("failures", judge_scores=judge_scores, chrf=chrf)
    return [bool(j >= judge_threshold or c < chrf_threshold) for j, c in zip(judge_scores, chrf, strict=True)]


def _memberships(group: object) -> list[str]:
    """An item's subgroups: several when it is a list or tuple, else the one it names."""
    return [str(g) for g in group] if isinstance(group, list | tuple) else [str(group)]


def group_rates(failed: Sequence[bool], groups: Sequence[object]) -> dict[str, dict[str, float]]:
    """Failure rate of every subgroup: {group: {"n": items, "failures": count, "rate": share}}, sorted by name.

    An item whose group is a list belongs to each group in it."""
    _same_length("group_rates", failed=failed, groups=groups)
    members: dict[str, list[bool]] = {}
    for f, group in zip(failed, groups, strict=True):
        for g in dict.fromkeys(_memberships(group)):
            members.setdefault(g, []).append(bool(f))
    return {g: {"n": len(m), "failures": sum(m), "rate": sum(m) / len(m)} for g, m in sorted(members.items())}


def error_ratio_variance(rates: dict[str, dict[str, float]] | Sequence[float]) -> float:
    """Population variance (ddof=0) of the subgroups' failure rates: 0 when every group fails equally often."""
    values = [r["rate"] for r in rates.values()] if isinstance(rates, dict) else list(rates)
    if not values:
        raise ValueError("error_ratio_variance needs at least one subgroup")
    return float(np.var(np.asarray(values, dtype=float)))


_LOOP_REPEATS = 3  # a phrase of 1-3 words said this many times back to back is a loop


def degenerate(texts: Sequence[str]) -> list[bool]:
    """Per text: empty, or a greedy repetition loop ("are are are", "c c c c", "I think I think I think")."""
    out = []
    for text in texts:
        words = str(text).split()
        looped = False
        for n in (1, 2, 3):
            run = 1
            for i in range(n, len(words) - n + 1, n):
                run = run + 1 if words[i:i + n] == words[i - n:i] else 1
                if run >= _LOOP_REPEATS:
                    looped = True
                    break
            if looped:
                break
        out.append(not words or looped)
    return out


COPY_N = 3  # word n-grams compared by copy_share


def copy_share(outputs: Sequence[str], inputs: Sequence[str], n: int = COPY_N) -> list[float]:
    """Per output: the share of its word n-grams (lower-cased; shorter n for outputs under n words) that
    also occur in its input. 1.0 for a copy of the input, 0.0 for a reply in its own words or an empty one."""
    _same_length("copy_share", outputs=outputs, inputs=inputs)
    out = []
    for o, i in zip(outputs, inputs, strict=True):
        words, source = str(o).lower().split(), str(i).lower().split()
        k = min(n, len(words))
        if k == 0:
            out.append(0.0)
            continue
        grams = [tuple(words[j:j + k]) for j in range(len(words) - k + 1)]
        seen = {tuple(source[j:j + k]) for j in range(len(source) - k + 1)}
        out.append(sum(g in seen for g in grams) / len(grams))
    return out


def relevance(output_vectors: np.ndarray, input_vectors: np.ndarray) -> list[float]:
    """Per output: cosine similarity of its embedding with its input's (rows unit-normalised by loop.embed)."""
    a, b = np.asarray(output_vectors, dtype=float), np.asarray(input_vectors, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"relevance: inputs differ in length ({a.shape} and {b.shape})")
    return np.einsum("ij,ij->i", a, b).tolist() if a.size else []


def variance_floor(rates: dict[str, dict[str, float]]) -> float:
    """Expected error-ratio variance when every subgroup has the same true failure rate (the pooled one)
    and differs only by binomial sampling: (1 - 1/G) * mean over groups of p(1-p)/n_g. A measured variance
    near this says nothing about unequal quality."""
    if not rates:
        raise ValueError("variance_floor needs at least one subgroup")
    n = np.array([r["n"] for r in rates.values()], dtype=float)
    p = float(sum(r["failures"] for r in rates.values()) / n.sum())
    return float((1 - 1 / len(n)) * np.mean(p * (1 - p) / n))


def mtld(texts: Sequence[str], threshold: float = MTLD_THRESHOLD) -> float:
    """MTLD lexical diversity (lexicalrichness; its tokenizer) of all texts joined; 0.0 when there are no words."""
    from lexicalrichness import LexicalRichness

    joined = " ".join(str(t) for t in texts)
    lex = LexicalRichness(joined)
    if lex.words == 0:
        return 0.0
    return float(lex.mtld(threshold=threshold))


def evaluate(
    outputs: Sequence[str],
    references: References,
    judge_scores: Sequence[float],
    groups: Sequence[object],
    *,
    judge_threshold: float = 0.5,
    chrf_threshold: float = 30.0,
    items: bool = False,
    inputs: Sequence[str] | None = None,
    relevance_scores: Sequence[float] | None = None,
    copy_threshold: float = 0.5,
    relevance_threshold: float = 0.3,
) -> dict:
    """All of the paper's metrics for one learner on one test split, plus each subgroup's failure rate;
    with `items`, also the per-item values the paired tests need (sentence chrF, failed, offensive,
    degenerate) under "items".

    With `inputs` and `relevance_scores` (counter-narration) an output fails when judged offensive, mostly
    copied (copy share >= copy_threshold), off-topic (relevance < relevance_threshold) or degenerate, and
    the result adds mean relevance and copy share; chrF is still reported but decides nothing."""
    _same_length("evaluate", outputs=outputs, references=references, judge_scores=judge_scores, groups=groups)
    chrf_each = sentence_chrf(outputs, references)
    loops = degenerate(outputs)
    reply = inputs is not None and relevance_scores is not None
    if reply:
        _same_length("evaluate", outputs=outputs, inputs=inputs, relevance_scores=relevance_scores)
        copied = copy_share(outputs, inputs)
        failed = [bool(j >= judge_threshold or c >= copy_threshold or r < relevance_threshold or d)
                  for j, c, r, d in zip(judge_scores, copied, relevance_scores, loops, strict=True)]
    else:
        failed = failures(judge_scores, chrf_each, judge_threshold=judge_threshold, chrf_threshold=chrf_threshold)
    rates = group_rates(failed, groups)
    out = {
        **task_scores(outputs, references),
        "offensive_share": offensive_share(judge_scores, judge_threshold),
        "failure_rate": float(np.mean(failed)),
        "error_ratio_variance": error_ratio_variance(rates),
        "variance_floor": variance_floor(rates),
        "degenerate_share": float(np.mean(loops)) if len(outputs) else 0.0,
        "mtld": mtld([o for o, d in zip(outputs, loops, strict=True) if not d]),
        "groups": rates,
    }
    if reply:
        out["relevance"], out["copy_share"] = float(np.mean(relevance_scores)), float(np.mean(copied))
    if items:
        out["items"] = {"chrf": chrf_each, "failed": failed, "degenerate": loops,
                        "offensive": [bool(j >= judge_threshold) for j in judge_scores]}
        if reply:
            out["items"] |= {"relevance": [float(r) for r in relevance_scores], "copy": copied}
    return out
