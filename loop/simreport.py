"""Plots and a short markdown report for a `labelloop simulate` run (from its results dict)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

# metric key, label, True when higher is better
# shown in the headline table but not plotted: degenerate outputs and the variance's noise floor
EXTRA = [
    ("degenerate_share", "degenerate outputs (loops, empty)", False),
    ("variance_floor", "noise floor of the variance (equal groups)", False),
    ("relevance", "relevance to the input (embedding cosine)", True),
    ("copy_share", "copy share (word 3-grams found in the input)", False),
]
CURVES = [
    ("chrf", "chrF (test, corpus)", True),
    ("bleu", "BLEU (test, corpus)", True),
    ("offensive_share", "share judged offensive", False),
    ("error_ratio_variance", "error-ratio variance across subgroups", False),
    ("mtld", "MTLD (non-degenerate outputs, threshold 0.72)", True),
    ("failure_rate", "failure rate (rule above the table)", False),
]


def _series(records: list[dict], metric: str) -> dict[str, dict[int, list[float]]]:
    """{strategy: {round: [value per seed]}}."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r["strategy"]][r["round"]].append(float(r[metric]))
    return out


def final_round(records: list[dict]) -> int:
    """The last round every run reached."""
    last: dict[tuple[str, int], int] = defaultdict(int)
    for r in records:
        last[(r["strategy"], r["seed"])] = max(last[(r["strategy"], r["seed"])], r["round"])
    return min(last.values())


def summary(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Last-round {metric: {strategy: {mean, std, min, max, n}}} over seeds."""
    last = final_round(records)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, _, _ in CURVES + [e for e in EXTRA if all(e[0] in r for r in records)]:
        out[key] = {}
        for strategy, rounds in _series(records, key).items():
            out[key][strategy] = _spread(rounds[last])
    return out


def _spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std, min, max and count of one metric over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def vs_starter(a: dict[str, float], start: float, higher_better: bool) -> str:
    """Whether every seed of a strategy ends on one side of the starter's value."""
    if a["min"] > start:
        return "better" if higher_better else "worse"
    if a["max"] < start:
        return "worse" if higher_better else "better"
    return "no change beyond the seed spread"


def plot_curves(records: list[dict], path: Path) -> Path:
    """Learning curves: one panel per metric, mean over seeds with the min-max band, x = labeled pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = _series(records, "labeled")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (key, label, higher) in zip(axes.flat, CURVES, strict=True):
        for strategy, rounds in sorted(_series(records, key).items()):
            xs = sorted(rounds)
            x = [np.mean(labeled[strategy][r]) for r in xs]
            v = [np.asarray(rounds[r]) for r in xs]
            line, = ax.plot(x, [a.mean() for a in v], marker="o", ms=3, label=strategy,
                            lw=2.2 if strategy == "stratified" else 1.3)
            ax.fill_between(x, [a.min() for a in v], [a.max() for a in v], color=line.get_color(), alpha=0.15)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.set_xlabel("accepted pairs (labeled set size)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=9)
    fig.suptitle("Learning curves: mean over seeds, band = min-max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(records: list[dict], path: Path) -> Path:
    """Per-subgroup failure rates in the last round: bars = mean over seeds, whiskers = min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = final_round(records)
    rates: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    starter: dict[str, float] = {}
    for r in records:
        if r["round"] == last:
            for g, v in r["groups"].items():
                rates[r["strategy"]][g].append(v["rate"])
        elif r["round"] == 0:
            starter = {g: v["rate"] for g, v in r["groups"].items()}
    groups = sorted({g for s in rates.values() for g in s})
    strategies = sorted(rates)
    width = 0.8 / max(len(strategies), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups) + 3), 4.8))
    x = np.arange(len(groups))
    for i, strategy in enumerate(strategies):
        vals = [np.asarray(rates[strategy].get(g, [np.nan])) for g in groups]
        mean = np.array([v.mean() for v in vals])
        err = np.array([[m - v.min() for m, v in zip(mean, vals, strict=True)],
                        [v.max() - m for m, v in zip(mean, vals, strict=True)]])
        err = np.clip(err, 0, None)  # the mean of equal rates can round past them (-1e-17): matplotlib refuses it
        ax.bar(x + (i - (len(strategies) - 1) / 2) * width, mean, width, yerr=err, capsize=2, label=strategy)
    if starter:
        ax.scatter(x, [starter.get(g, np.nan) for g in groups], marker="_", s=400, color="black", zorder=3,
                   label="starter (round 0)")
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel("failure rate")
    ax.set_title(f"Per-subgroup failure rate after round {last} (bars: mean over seeds, whiskers: min-max)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scale(key: str) -> int:
    """Variances are shown x 1000, shares in %."""
    if key in ("error_ratio_variance", "variance_floor", "excess_variance"):
        return 1000
    return 100 if key in ("offensive_share", "failure_rate", "degenerate_share", "copy_share") else 1


def _fmt(s: dict[str, float], key: str) -> str:
    scale = _scale(key)
    return f"{s['mean'] * scale:.2f} ± {s['std'] * scale:.2f} [{s['min'] * scale:.2f}, {s['max'] * scale:.2f}]"


def markdown(result: dict, curves: str, groups: str) -> str:
    """The short report: setup, headline table with seed spread, what the numbers do and do not show."""
    cfg, records, judge = result["config"], result["records"], result["judge"]
    summ, last = summary(records), final_round(records)
    starter = next(r for r in records if r["round"] == 0)
    task = result.get("task") or {"name": "style_transfer"}
    lines = [
        f"# Simulated active learning: strategies side by side ({TASK_TITLES[task['name']]})",
        "",
        f"Data: `{cfg['data']}`; pool {result['data']['pool']} items, held-out test split "
        f"{result['data']['test']} items (never selectable); subgroups: {result['data']['subgroups']}.",
        f"{cfg['rounds']} rounds x budget {cfg['budget']} per round, K = {cfg['k']} clusters, "
        f"seeds {', '.join(map(str, cfg['seeds']))}; verifier rejects {cfg['reject_rate']:.0%} of the selected "
        f"items; teacher = {_teacher(cfg['reference_col'])}. R (selects) = {result['r']}.",
        f"Learner: `{cfg['learner']}`; {result['training']} ({cfg['epochs']} epochs, lr {cfg['lr']}).",
        _starter_line(result),
        f"Wall time: {result['timings']['total_s'] / 60:.1f} min ({result['machine']['cpu']}).",
        "",
    ]
    if result.get("command"):
        lines[2:2] = ["```sh", result["command"], "```", ""]
    if judge.get("same_as_r"):
        lines += ["> **Warning: the judge is R itself** (profanity). R's own bias is then invisible to the "
                  "offensiveness metrics, and the strategies that optimise R are graded by R.", ""]
    else:
        acc = judge.get("held_out_accuracy")
        lines += [f"Judge (not R): an embedding probe trained on `{judge.get('trained_on')}` "
                  f"({judge.get('examples')} texts, toxic = 1, neutral rewrite = 0); held-out accuracy "
                  f"{acc:.1%}." if acc is not None else "Judge: an embedding probe.",
                  ""]
    lines += [f"Judge calibration on the test split: flags {judge['flags_test_inputs']:.1%} of the inputs and "
              f"{judge['flags_test_references']:.1%} of the human references as offensive"
              + (f"; {judge['overlap_with_test']} test texts also occur in its training data."
                 if "overlap_with_test" in judge else "."), ""]
    tagger = result["data"].get("tagger")
    if tagger:
        lines += [f"Subgroups: a target-group tagger ({tagger['kind']}) trained on `{tagger['trained_on']}`"
                  f" ({len(tagger['examples']) - 1} groups and `none`); held-out accuracy"
                  f" {tagger['held_out_accuracy']:.1%} on {tagger['held_out']} demonstrations kept out of training"
                  f" (always answering the most common class: {tagger['chance']:.1%}). Test items per tag: "
                  + ", ".join(f"{g} {n}" for g, n in tagger["tagged"].items()) + ".", ""]
    if "failure" in task:
        lines += [f"Task: {TASK_TITLES[task['name']]}; template `{task['template']}`"
                  + (f"; the learner sees its instruction \"{task['learner_instruction']}\"."
                     if task.get("learner_instruction") else "; the learner sees bare texts.")
                  + f" An output fails when {task['failure']}.", ""]
    if task["name"] == "counter_narration":
        lines += ["Measures that do not reward copying the input: **relevance** (cosine similarity of the reply's"
                  " sentence embedding with the input's, the project's embedder), **copy share** (share of the"
                  " reply's word 3-grams that occur in the input: 1 for a copy) and the **judge's offensiveness**."
                  " chrF and BLEU against one human reply reward copying the hate speech (the *copy input* baseline"
                  " shows how much) and are not used to rank the strategies.", ""]
    lines += [f"## Headline: after round {last}", "",
              "mean ± std [min, max] over seeds. Offensive share and failure rate in %, error-ratio variance "
              "x 1000.", ""]
    strategies = sorted(summ["chrf"], key=lambda s: (s != "stratified", s))
    base = result.get("baselines") or {}
    head = ("| metric | starter | " + " | ".join(strategies) + " |"
            + "".join(f" {BASELINE_NAMES[b]} |" for b in base))
    lines += [head, "|" + "---|" * (len(strategies) + 2 + len(base))]
    for key, label, higher in CURVES + [e for e in EXTRA if e[0] in summ]:
        scale = _scale(key)
        lines.append(f"| {label} ({'↑' if higher else '↓'}) | {starter[key] * scale:.2f} | "
                     + " | ".join(_fmt(summ[key][s], key) for s in strategies) + " |"
                     + "".join(f" {base[b][key] * scale:.2f} |" for b in base))
    if "degenerate_share" in summ:
        left = ", ".join([f"starter {starter['degenerate_share']:.0%}"]
                         + [f"{s} {summ['degenerate_share'][s]['mean']:.0%}" for s in strategies])
        lines += ["", "MTLD is computed on the non-degenerate outputs only (loops and empty outputs would make it"
                  f" measure the loops); the share left out is the degenerate row: {left}."]
    if base:
        lines += ["", "Baselines: *copy input* returns the input unchanged; *constant* answers every input with"
                  f" one reply, the pool's most common reference (\"{_short(base['constant'].get('text', ''))}\")."]
    lines += _warnings(result, summ, strategies, starter)
    lines += _per_group(result, strategies, last)
    lines += ["", f"![learning curves]({curves})", "", f"![per-subgroup failure rates]({groups})", ""]
    lines += _examples(result, strategies)
    lines += _tests(result, last)
    lines += _k_sweep(result, last)
    lines += _second(result)
    lines += _group_test(result)
    lines += ["Against the starter (round 0, before any selection), after the last round (descriptive: whether"
              " every seed ends on one side of the starter's value; not a test):", ""]
    for key, label, higher in CURVES:
        side = {s: vs_starter(summ[key][s], starter[key], higher) for s in strategies}
        lines.append(f"- {label}: " + "; ".join(f"{s} {v}" for s, v in side.items()) + ".")
    lines += [""]
    lines += [
        "The seeds vary the selection and fine-tuning randomness, not the pool, the test split or the clusters,"
        " so neither the seed spread nor the tests above cover the variance a new dataset would bring.",
        "",
        f"{_learner_words(result, cfg['rounds'] * cfg['budget'])}: the experiment shows how the strategies rank"
        " on this pool under this budget and learner, not what another learner or a GPT-4 teacher would reach."
        " The judge is a linear probe with its own errors; offensiveness is judged on learner outputs, "
        "whose distribution differs from the probe's training texts.",
        "",
    ]
    return "\n".join(lines)


TASK_TITLES = {"style_transfer": "style transfer: offensive to inoffensive rewrite",
               "counter_narration": "counter-narration: a reply to hateful text"}
BASELINE_NAMES = {"copy_input": "copy input", "constant": "constant"}
DEGENERATE_LIMIT = 0.5  # above this share of loops or empty outputs, task scores do not measure quality


def _starter_line(result: dict) -> str:
    """Which starter every run began from and how it was made."""
    built = result.get("starter")
    if not built:
        return ("Starter: the checkpoint given by `--learner`, not built for this data (the bundled models/starter"
                " learned from 2,000 ParaDetox pairs, and its tokenizer saw all of data/paradetox/pool.tsv, test"
                " references included).")
    how = "reused from the cache (built in" if built.get("cached") else "built for this run in"
    if built.get("objective") == "copy":
        what = (f"to copy each of the {built['pairs']} pool texts to itself (self-supervised: no labelled pair, so"
                " everything it knows of the task comes from the budget)")
    else:
        what = (f"on {built['pairs']} pairs of `{built['data']}` kept out of pool and test, plus"
                f" {built['copy_pairs']} copy pairs (reference to itself)")
    return (f"Starter: built for this data by `{built['built_by']}` (loop/starter.py): {_arch(built)} of"
            f" {built['parameters'] / 1e6:.1f} M parameters trained {built['steps']} steps (batch"
            f" {built['batch_size']}, lr {built['lr']:g}) {what}; tokenizer fitted on"
            f" {built['tokenizer_data']}. {how.capitalize()} {built['seconds']:.0f} s"
            + (")." if built.get("cached") else "."))


def _learner_words(result: dict, pairs: int) -> str:
    """The learner in words: its size where the starter was built here, else the checkpoint it came from."""
    built = result.get("starter") or {}
    if built.get("parameters"):
        return (f"The learner is small ({built['parameters'] / 1e6:.1f} M parameters) and trained on at most {pairs}"
                " pairs, so the absolute scores are low")
    given = (result.get("config") or {}).get("learner", "--learner")
    return f"The learner is `{given}`, trained on at most {pairs} pairs"


def _arch(built: dict) -> str:
    """'a T5' or 'a BART': the architecture of a built starter (results written before the choice: T5)."""
    return "a BART" if built.get("arch") == "bart" else "a T5"


def _tests(result: dict, last: int) -> list[str]:
    """The paired tests (loop/stats.py): stratified against each baseline with Holm-adjusted p-values, the
    conclusions they allow, and every strategy's error-ratio variance net of its noise floor."""
    tests = result.get("tests") or {}
    lines = [f"## Does stratified beat the baselines? Paired tests after round {last}", ""]
    if not tests:
        return [*lines, "This results.json has no per-item data (written before the paired tests existed).", ""]
    method = tests["method"]
    lines += [f"Paired bootstrap over test items ({method['n_boot']} resamples): {method['pooling']}; the"
              " difference is stratified minus the other strategy, with its 95% interval and two-sided p-value."
              f" Holm's correction over the {sum('p' in c for c in tests.get('comparisons', []))} tests made keeps"
              f" the chance of any false call at {method['alpha']:.0%}; a verdict needs an adjusted p below"
              f" {method['alpha']:g}. The sign test over the {method['seeds']} seeds (how many seeds stratified is"
              " ahead in) checks that no single seed carries the result"
              + (" (with 5 seeds its smallest p is 0.06: it checks the direction, the bootstrap decides)."
                 if method["seeds"] >= 5 else f"; with {method['seeds']} seeds it cannot reach significance,"
                 " use --seeds with at least 5."),
              "Failure, offensive and copy shares in %, variances x 1000. A metric marked *uninformative* was not"
              " tested (and is not in Holm's count): it cannot tell the strategies apart, which is not a tie.", ""]
    comparisons = tests.get("comparisons") or []
    if comparisons:
        lines += ["| metric | stratified vs | difference [95% CI] | p | p (Holm) | seeds stratified ahead | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [_test_row(c, c["against"], method["seeds"]) for c in comparisons]
        lines += ["", "What the tests allow one to say:", ""]
        for verdict in ("better", "worse"):
            found = [c for c in comparisons if c["verdict"] == verdict]
            lines += [f"- stratified is **{verdict}** than {c['against']} on {c['label']} (adjusted p"
                      f" {c['p_holm']:.3f})." for c in found]
        quiet = sorted({c["against"] for c in comparisons if c["verdict"] == "no significant difference"})
        if not any(c["verdict"] in ("better", "worse") for c in comparisons):
            lines.append("- No difference between stratified and any baseline passes the corrected test: this run"
                         " cannot tell them apart, in either direction.")
        elif quiet:
            lines.append("- Everything else tested shows no significant difference (against "
                         + ", ".join(quiet) + "): this run cannot tell them apart, in either direction.")
        useless = sorted({c["label"] for c in comparisons if c["verdict"].startswith("uninformative")})
        if useless:
            lines.append(f"- Uninformative here: {', '.join(useless)}.")
        lines.append("")
    excess = tests.get("excess_variance") or {}
    if excess:
        lines += [f"Error-ratio variance across {result['data']['subgroups']}, less its binomial noise floor (mean"
                  " over seeds; 95% bootstrap interval over items; x 1000). An interval that contains 0 is"
                  " variance that sampling alone explains:", "",
                  "| strategy | variance − floor [95% CI] |", "|---|---|"]
        lines += [f"| {s} | {v['value'] * 1000:+.2f} [{v['low'] * 1000:+.2f}, {v['high'] * 1000:+.2f}] |"
                  for s, v in excess.items()]
        lines.append("")
    return lines


def _test_row(c: dict, against: str, seeds: int) -> str:
    """One paired test as a table row: metric, what it is against, difference, p-values, seeds, verdict."""
    if "p" not in c:
        return f"| {c['label']} | {against} | | | | | {c['verdict']} |"
    k = _scale(c["metric"])
    ahead = c["sign"]["positive" if c["higher_better"] else "negative"]
    return (f"| {c['label']} ({'↑' if c['higher_better'] else '↓'}) | {against} | "
            f"{c['diff'] * k:+.2f} [{c['low'] * k:+.2f}, {c['high'] * k:+.2f}] | {c['p']:.3f} | "
            f"{c['p_holm']:.3f} | {ahead} of {seeds} (p {c['sign']['p']:.2f}) | **{c['verdict']}** |")


def _second(result: dict) -> list[str]:
    """The second learner (not in the loop) trained on each strategy's acquired pairs: its metrics per
    strategy over seeds, then the same paired tests as the headline."""
    second = result.get("second_learner")
    if not second:
        return []
    info, values, start = second["learner"], second["values"], second["start"]
    if info.get("built") is False:
        what = f"`{info['path']}` (given with --second-learner)"
    else:
        what = (f"{_arch(info)} of {info['parameters'] / 1e6:.1f} M parameters (width {info.get('width')}), built"
                f" as the starter was, {info['steps']} steps")
    strategies = sorted(values, key=lambda s: (s != "stratified", s))
    lines = ["## Does the acquired data help a model outside the loop?", "",
             f"A second learner, {what}, fine-tuned once from its start on each run's accepted pairs (as many as"
             " the run acquired, same schedule), then scored on the test split. mean ± std [min, max] over seeds.",
             "", *_spread_table("its start", start, values, strategies, CURVES)]
    return [*lines, *_test_table(second.get("tests") or {}), ""]


def _spread_table(first: str, start: dict, values: dict[str, list[dict]], strategies: list[str],
                  rows: list[tuple[str, str, bool]]) -> list[str]:
    """A side experiment's table: one row per metric, `start`'s value, then each strategy's spread over seeds."""
    lines = [f"| metric | {first} | " + " | ".join(strategies) + " |", "|" + "---|" * (len(strategies) + 2)]
    for key, label, higher in rows:
        lines.append(f"| {label} ({'↑' if higher else '↓'}) | {start[key] * _scale(key):.2f} | "
                     + " | ".join(_fmt(_spread([v[key] for v in values[s]]), key) for s in strategies) + " |")
    return lines


def _test_table(tests: dict) -> list[str]:
    """The paired tests of a side experiment (second learner, group test) as a table, if any were made."""
    comparisons = tests.get("comparisons") or []
    if not comparisons:
        return []
    return ["", "Paired tests as above (Holm over these tests alone):", "",
            "| metric | stratified vs | difference [95% CI] | p | p (Holm) | seeds stratified ahead | verdict |",
            "|---|---|---|---|---|---|---|",
            *[_test_row(c, c["against"], tests["method"]["seeds"]) for c in comparisons]]


GROUP_TEST_ROWS = [("failure_rate", "failure rate", False), ("offensive_share", "share judged offensive", False),
                   ("error_ratio_variance", "error-ratio variance across groups", False),
                   ("variance_floor", "its noise floor (equal groups)", False)]


def _group_test(result: dict) -> list[str]:
    """The --group-test texts (real groups, no reference): failure and offensive shares, the error-ratio
    variance across those groups less its noise floor, and the paired tests of stratified against the rest."""
    gt = result.get("group_test")
    if not gt:
        return []
    values = gt["values"]
    strategies = sorted((s for s in values if s != "starter"), key=lambda s: (s != "stratified", s))
    groups = ", ".join(f"{g} {int(v['n'])}" for g, v in sorted(gt["groups"].items()))
    where = f" (rows with {gt['where']})" if gt.get("where") else ""
    lines = ["## Quality across real groups (--group-test)", "",
             f"`{gt['file']}`{where}: {gt['texts']} texts, none in the pool, each with its target group: {groups}."
             f" The judge flags {gt['input_offensive_share']:.1%} of the inputs. Every run's last learner rewrites"
             " them; an output fails when the judge finds it offensive or it is degenerate (there is no"
             " reference). mean ± std [min, max] over seeds; shares in %, variances x 1000.", "",
             *_spread_table("starter", values["starter"][0], values, strategies, GROUP_TEST_ROWS)]
    tests = gt.get("tests") or {}
    lines += _test_table(tests)
    excess = tests.get("excess_variance") or {}
    if excess:
        lines += ["", "Error-ratio variance across these groups less its noise floor (x 1000, 95% interval): "
                  + "; ".join(f"{s} {v['value'] * 1000:+.2f} [{v['low'] * 1000:+.2f}, {v['high'] * 1000:+.2f}]"
                              for s, v in excess.items()) + "."]
    return [*lines, ""]


def _k_sweep(result: dict, last: int) -> list[str]:
    """Stratified at every K of the sweep against random: the metrics per K, then the paired tests of each
    K against random, Holm-corrected over the whole sweep."""
    sweep = result.get("k_sweep")
    if not sweep:
        return []
    arms = [f"K={k}" for k in sweep["ks"]] + ["random"]
    tested = [c for c in sweep["comparisons"] if "p" in c]
    seeds = len(result["config"]["seeds"])
    lines = [f"## How many clusters? Stratified at K = {', '.join(map(str, sweep['ks']))} against random, after round"
             f" {last}", "",
             f"Stratified selection ran again at each K (KMeans refitted on the pool at that K; K = {sweep['main_k']}"
             " is the main run above), with the same seeds, verifier verdicts and test split; random does not"
             f" depend on K and ran once. Values are means over the {seeds} seeds and the test items (sentence chrF,"
             " not the corpus chrF of the headline; shares in %; variance − floor x 1000, over the subgroups"
             " above). Each K is tested against random with the paired tests above; Holm's correction covers all"
             f" {len(tested)} tests of the sweep together.", "",
             "| metric | " + " | ".join(arms) + " |", "|" + "---|" * (len(arms) + 1)]
    for name, label in sweep["metrics"].items():
        if all(name in sweep["values"][a] for a in arms):
            lines.append(f"| {label} | " + " | ".join(f"{sweep['values'][a][name] * _scale(name):.2f}"
                                                      for a in arms) + " |")
    lines += ["", "| metric | K (vs random) | difference [95% CI] | p | p (Holm) | seeds K ahead | verdict |",
              "|---|---|---|---|---|---|---|"]
    lines += [_test_row(c, f"K={c['k']}", seeds) for c in sweep["comparisons"]]
    calls = [f"K={c['k']} is **{c['verdict']}** than random on {c['label']} (adjusted p {c['p_holm']:.3f})"
             for c in tested if c["verdict"] in ("better", "worse")]
    lines += ["", ("; ".join(calls) + "." if calls else
                   "No K differs from random on any metric after the correction: this sweep cannot pick a K."), ""]
    return lines


def _per_group(result: dict, strategies: list[str], last: int) -> list[str]:
    """Per-group failure rate for the starter and each strategy (mean over seeds, last round), with the
    number of test items in each group: the spread the error-ratio variance summarises."""
    rates: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[str, int] = {}
    for r in result["records"]:
        if r["round"] in (0, last) and "groups" in r:
            who = "starter" if r["round"] == 0 else r["strategy"]
            for g, v in r["groups"].items():
                rates[g][who].append(v["rate"])
                sizes[g] = int(v.get("n", 0))
    if not rates:
        return []
    cols = ["starter", *strategies]
    lines = [f"## Per-group failure rate after round {last} ({result['data']['subgroups']})", "",
             "Failure rate in % (mean over seeds); *n* = test items in the group. A group under 10 items moves by"
             " 10 points or more per item.", "",
             "| group | n | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for g in sorted(rates, key=lambda g: (-sizes[g], g)):
        lines.append(f"| {_short(g, 40)} | {sizes[g]} | "
                     + " | ".join(f"{np.mean(rates[g][c]) * 100:.1f}" if rates[g][c] else "" for c in cols) + " |")
    return [*lines, ""]


def _short(text: str, width: int = 70) -> str:
    """One table cell: line breaks and pipes escaped, cut to `width` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _warnings(result: dict, summ: dict, strategies: list[str], starter: dict) -> list[str]:
    """What makes the table above unfit to decide: degenerate outputs, baselines that beat every learner,
    a variance inside its noise floor."""
    out = []
    if "degenerate_share" in summ:
        bad = [f"{s} {summ['degenerate_share'][s]['mean']:.0%}" for s in strategies
               if summ["degenerate_share"][s]["mean"] > DEGENERATE_LIMIT]
        if starter.get("degenerate_share", 0) > DEGENERATE_LIMIT:
            bad.insert(0, f"starter {starter['degenerate_share']:.0%}")
        if bad:
            out.append(f"- **Degenerate outputs**: more than {DEGENERATE_LIMIT:.0%} of the outputs loop or are empty"
                       f" ({', '.join(bad)}). Task scores, failure rates and their variance then describe the"
                       " loops, not the strategies: do not draw conclusions from them.")
    for name, metrics in (result.get("baselines") or {}).items():
        best = max(summ["chrf"][s]["max"] for s in strategies)
        if metrics["chrf"] > max(best, starter["chrf"]):
            out.append(f"- **The {BASELINE_NAMES[name]} baseline beats every learner on chrF** ({metrics['chrf']:.1f}"
                       f" against at most {max(best, starter['chrf']):.1f}): no learner comes closer to the"
                       " references than leaving the text alone, so chrF cannot show which strategy rewrites better"
                       " here (a learner that changes less scores higher); read it beside the failure rate and the"
                       " offensive share.")
    if "variance_floor" in summ:
        near = [s for s in strategies
                if summ["error_ratio_variance"][s]["mean"] < 2 * summ["variance_floor"][s]["mean"]]
        if near:
            out.append(f"- **Error-ratio variance within noise** for {', '.join(near)}: under twice what equal groups"
                       " would show by sampling alone (the floor above; a strategy with a higher overall failure"
                       " rate has a higher floor). A lower variance there is not more even quality.")
    return ["", "### Before reading the table", "", *out, ""] if out else []


def _examples(result: dict, strategies: list[str]) -> list[str]:
    """A table of test inputs with their first reference, the starter's output and each strategy's last one."""
    examples = result.get("examples") or []
    if not examples:
        return []
    lines = ["## Example outputs (test split, first seed, last round)", "",
             "| input | reference | starter | " + " | ".join(strategies) + " |",
             "|" + "---|" * (3 + len(strategies))]
    for ex in examples:
        refs = ex["references"] if isinstance(ex["references"], list) else [ex["references"]]
        lines.append(f"| {_short(ex['input'])} | {_short(refs[0])} | {_short(ex['starter'])} | "
                     + " | ".join(_short(ex["final"].get(s, "")) for s in strategies) + " |")
    return [*lines, ""]


def write(result: dict, out: Path) -> dict[str, Path]:
    """Write curves.png, groups.png and report.md next to results.json."""
    out = Path(out)
    curves = plot_curves(result["records"], out / "curves.png")
    groups = plot_groups(result["records"], out / "groups.png")
    report = out / "report.md"
    report.write_text(markdown(result, curves.name, groups.name))
    return {"curves": curves, "groups": groups, "report": report}


def _teacher(columns: str | list[str]) -> str:
    """Which reference column plays the teacher and, with several, that the test split is scored on all."""
    if isinstance(columns, str):
        return f"the `{columns}` column"
    every = ", ".join(f"`{c}`" for c in columns)
    return f"the `{columns[0]}` column (the test split is scored against all of {every})"


if __name__ == "__main__":  # rewrite the plots and report of an earlier run: python -m loop.simreport DIR
    import json
    import sys

    folder = Path(sys.argv[1])
    write(json.loads((folder / "results.json").read_text()), folder)
