"""The project manager's dashboard (`/dashboard`, read-only) and Prometheus metrics (`/metrics`).

Both show loop/status.py's facts, the same numbers as `labelloop status`. Plots are drawn here with
matplotlib (no pyplot, so threads are safe) and served as SVG images: nothing comes from a CDN, and
an SVG loaded through <img> cannot run script whatever text the pool holds. The page reloads itself.
The page is a module-level blueprint whose views read the app's ledger through `get_ledger()`; it and
`/metrics` sit on the app, so whatever `before_request` auth the app has guards them too.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, render_template_string, request
from matplotlib.figure import Figure
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from loop import status
from loop.ledger import Ledger
from ml_backend.state import get_backend, get_ledger

REFRESH_S = 30  # app.config['DASHBOARD_REFRESH_S'] overrides it
COLORS = {"accept": "#2e7d32", "edit": "#f9a825", "reject": "#c62828", "skipped": "#8e24aa", "remaining": "#b0bec5",
          "failed": "#6d4c41", "labeled": "#1565c0", "pool": "#cfd8dc"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<title>labelloop dashboard</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #263238; background: #fafafa; }
 h1 { font-size: 1.4rem; margin: 0 0 .2rem; } .sub { color: #607d8b; margin-bottom: 1rem; }
 .tiles { display: flex; flex-wrap: wrap; gap: .8rem; margin-bottom: 1rem; }
 .tile { background: #fff; border: 1px solid #e0e0e0; border-radius: 8px; padding: .6rem 1rem; min-width: 9rem; }
 .tile .v { font-size: 1.5rem; font-weight: 600; } .tile .k { color: #607d8b; font-size: .8rem; }
 .warn { border-color: #c62828; } .warn .v { color: #c62828; }
 .plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1rem; }
 .plots figure { margin: 0; background: #fff; border: 1px solid #e0e0e0; border-radius: 8px; padding: .5rem; }
 .plots img { width: 100%; height: auto; } figcaption { font-size: .85rem; color: #455a64; }
 table { border-collapse: collapse; background: #fff; margin: 1rem 0; font-size: .85rem; }
 th, td { border: 1px solid #e0e0e0; padding: .25rem .6rem; text-align: right; } th { background: #eceff1; }
</style></head><body>
<h1>labelloop: batch progress</h1>
<div class="sub">as of <span id="generated">{{ f.generated_at }}</span>; reloads every {{ refresh }} s</div>
<div class="tiles">
 {% if c %}
 <div class="tile"><div class="v" id="current-round">{{ c.round }}</div><div class="k">current round</div></div>
 <div class="tile"><div class="v" id="current-state">{{ c.state }}</div><div class="k">state</div></div>
 <div class="tile"><div class="v" id="current-verified">{{ c.verified }} / {{ c.imported }}</div>
  <div class="k">verified / imported</div></div>
 <div class="tile"><div class="v" id="current-skipped">{{ c.skipped }}</div><div class="k">skipped</div></div>
 <div class="tile"><div class="v" id="current-remaining">{{ c.remaining }}</div><div class="k">remaining</div></div>
 <div class="tile"><div class="v" id="eta">{{ eta }}</div><div class="k">estimated completion</div></div>
 {% if c.deadline and c.state in ('imported', 'verifying') %}<div class="tile"><div class="v" id="deadline">
  {{ c.deadline }}</div><div class="k">deadline: the round closes with what is verified</div></div>{% endif %}
 {% for a in f.lookahead %}<div class="tile"><div class="v" id="lookahead-{{ a.round }}">{{ a.round }}: {{ a.verified }}
  / {{ a.imported }}</div><div class="k">look-ahead round ({{ a.state }}), verified / imported</div></div>{% endfor %}
 {% else %}<div class="tile"><div class="v" id="current-round">none</div><div class="k">no round yet</div></div>
 {% endif %}
 <div class="tile"><div class="v" id="teacher-cost">${{ "%.4f"|format(f.teacher.total.cost) }}</div>
  <div class="k">teacher cost
  ({{ f.teacher.total.prompt_tokens + f.teacher.total.completion_tokens }} tokens)</div></div>
 <div class="tile"><div class="v" id="median-lead">{{ lead }}</div><div class="k">median lead time</div></div>
 <div class="tile {{ 'warn' if flagged else '' }}"><div class="v" id="flagged-clusters">
  {{ flagged|join(', ') if flagged else 'none' }}</div>
  <div class="k">clusters the teacher does not suit
  (reject &gt; {{ (100 * f.reject_threshold)|round|int }}%)</div></div>
</div>
<div class="plots">
 {% for name, caption in plots %}
 <figure><img id="plot-{{ name }}" src="{{ url_for('dashboard.plot', name=name) }}" alt="{{ caption }}">
 <figcaption>{{ caption }}</figcaption></figure>
 {% endfor %}
</div>
<table id="rounds"><tr><th>round</th><th>state</th><th>closed</th><th>learner</th><th>selected</th><th>imported</th>
 <th>verified</th><th>skipped</th><th>returned</th><th>remaining</th><th>accept</th><th>edit</th><th>reject</th></tr>
 {% for r in f.rounds %}<tr data-round="{{ r.round }}"><td>{{ r.round }}</td>
 <td class="state">{{ r.state }}{% if r.lookahead %} (look-ahead){% endif %}</td>
 <td>{{ r.closed or '' }}</td><td>{{ r.learner_version }}</td><td>{{ r.selected }}</td><td>{{ r.imported }}</td>
 <td>{{ r.verified }}</td><td class="skipped">{{ r.skipped }}</td><td>{{ r.returned }}</td>
 <td>{{ r.remaining }}</td><td>{{ r.accept }}</td><td>{{ r.edit }}</td><td>{{ r.reject }}</td></tr>{% endfor %}
</table>
<table id="clusters"><tr><th>round</th><th>cluster</th><th>imported</th><th>verified</th><th>skipped</th>
 <th>skip rate</th><th>remaining</th></tr>
 {% for c in f.clusters %}<tr data-round="{{ c.round }}" data-cluster="{{ c.cluster }}"><td>{{ c.round }}</td>
 <td>{{ c.cluster }}</td><td>{{ c.imported }}</td><td>{{ c.verified }}</td><td class="skipped">{{ c.skipped }}</td>
 <td>{{ '%.0f%%'|format(100 * c.skip_rate) if c.skip_rate is not none else '' }}</td><td>{{ c.remaining }}</td>
 </tr>{% endfor %}
</table>
<table id="agreement"><tr><th>agreement (Krippendorff's alpha)</th><th>tasks two or more verified</th>
 <th>alpha</th></tr>
 <tr data-scope="all"><td>all ({{ f.team.overlap }} wanted per task)</td><td>{{ f.agreement.overall.units }}</td>
 <td class="alpha">{{ alpha(f.agreement.overall.alpha) }}</td></tr>
 {% for r in f.agreement.rounds %}<tr data-scope="round-{{ r.round }}"><td>round {{ r.round }}</td>
 <td>{{ r.units }}</td><td class="alpha">{{ alpha(r.alpha) }}</td></tr>{% endfor %}
 {% for c in f.agreement.clusters %}<tr data-scope="cluster-{{ c.cluster }}"><td>cluster {{ c.cluster }}</td>
 <td>{{ c.units }}</td><td class="alpha">{{ alpha(c.alpha) }}</td></tr>{% endfor %}
 {% for p in f.agreement.pairs %}<tr data-scope="pair"><td>{{ p.pair|join(' & ') }}</td><td>{{ p.units }}</td>
 <td class="alpha">{{ alpha(p.alpha) }}</td></tr>{% endfor %}
</table>
<table id="adjudication"><tr><th>awaiting adjudication: round</th><th>cluster</th><th>task</th><th>votes</th></tr>
 {% for a in f.adjudication %}<tr data-task="{{ a.task_id }}"><td>{{ a.round }}</td><td>{{ a.cluster }}</td>
 <td>{% if a.link %}<a href="{{ a.link }}">{{ a.task_id }}</a>{% else %}{{ a.task_id }}{% endif %}</td>
 <td>{{ a.votes }}</td></tr>{% else %}<tr><td colspan="4">none</td></tr>{% endfor %}
</table>
<table id="annotators"><tr><th>annotator</th><th>annotations</th><th>skips</th><th>median lead time (s)</th>
 <th>per hour</th></tr>
 {% for a in f.annotation.annotators %}<tr><td>{{ a.annotator }}</td><td>{{ a.annotations }}</td>
 <td class="skips">{{ a.skips }}</td>
 <td>{{ a.median_lead_time_s if a.median_lead_time_s is not none else '' }}</td>
 <td class="per-hour">{{ a.per_hour if a.per_hour is not none else ('too few to rate' if a.annotations else '') }}</td>
 </tr>{% endfor %}
</table>
</body></html>
"""

PLOTS = (
    ("progress", "Progress per round: verified, skipped, still open in Label Studio, teacher failures"),
    ("verdicts", "Verdicts per cluster, all rounds (red label: teacher flagged for that cluster)"),
    ("learner", "Learner metrics across versions"),
    ("coverage", "Labeled share of every cluster and subgroup of the pool"),
)


def _svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue()


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", color="#90a4ae")
    ax.set_axis_off()


def plot_progress(f: dict, ax) -> None:
    """Stacked bars per round: verified (by verdict), skipped, remaining, teacher failures."""
    rounds = f["rounds"]
    if not rounds:
        return _empty(ax, "no rounds yet")
    xs = [str(r["round"]) for r in rounds]
    bottom = [0] * len(rounds)
    for key in ("accept", "edit", "reject", "skipped", "remaining", "failed"):
        values = [r[key] for r in rounds]
        ax.bar(xs, values, bottom=bottom, color=COLORS[key], label=key)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("round")
    ax.set_ylabel("items")
    ax.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)


def plot_verdicts(f: dict, ax) -> None:
    """Accept/edit/reject rates per cluster over all rounds, the threshold as a line."""
    fit = f["teacher_fit"]
    totals: dict[int, dict] = {}
    for c in f["clusters"]:
        t = totals.setdefault(c["cluster"], {"accept": 0, "edit": 0, "reject": 0})
        for k in t:
            t[k] += c[k]
    if not any(sum(t.values()) for t in totals.values()):
        return _empty(ax, "no verdicts yet")
    clusters = sorted(totals)
    xs = [str(c) for c in clusters]
    bottom = [0.0] * len(clusters)
    for key in ("accept", "edit", "reject"):
        values = [totals[c][key] / max(sum(totals[c].values()), 1) for c in clusters]
        ax.bar(xs, values, bottom=bottom, color=COLORS[key], label=key)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(1 - f["reject_threshold"], color="#c62828", linestyle="--", linewidth=1)
    flagged = {t["cluster"] for t in fit if t["flagged"]}
    for label, c in zip(ax.get_xticklabels(), clusters, strict=True):
        if c in flagged:
            label.set_color("#c62828")
            label.set_fontweight("bold")
    ax.set_xlabel("cluster")
    ax.set_ylabel("share of verified items")
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)


def plot_learner(f: dict, ax) -> None:
    """Every numeric metric of the learner's versions, one line each."""
    versions = [v for v in f["learners"] if v["metrics"]]
    names = sorted({k for v in versions for k, x in v["metrics"].items() if isinstance(x, (int, float))})
    if not names:
        return _empty(ax, "no trained versions yet")
    xs = [v["version"] for v in versions]
    for name in names:
        ax.plot(xs, [v["metrics"].get(name) for v in versions], marker="o", label=name)
    ax.set_xlabel("learner version")
    ax.legend(fontsize=8)


def plot_coverage(f: dict, ax) -> None:
    """Pool size and labeled items per cluster and per subgroup."""
    cov = f["coverage"]
    rows = [(f"c{c['cluster']}", c) for c in cov["clusters"]] + [(f"{s['subgroup']}", s) for s in cov["subgroups"]]
    if not rows:
        return _empty(ax, "empty pool")
    xs = [name for name, _ in rows]
    ax.bar(xs, [r["pool"] for _, r in rows], color=COLORS["pool"], label="pool")
    ax.bar(xs, [r["labeled"] for _, r in rows], color=COLORS["labeled"], label="labeled")
    for i, (_, r) in enumerate(rows):
        if r["coverage"] is not None:
            ax.text(i, r["pool"], f"{100 * r['coverage']:.0f}%", ha="center", va="bottom", fontsize=8)
    if cov["subgroups"]:
        ax.axvline(len(cov["clusters"]) - 0.5, color="#90a4ae", linewidth=1)
    ax.set_xlabel("cluster | subgroup")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)


DRAW: dict[str, Callable[[dict, object], None]] = {
    "progress": plot_progress, "verdicts": plot_verdicts, "learner": plot_learner, "coverage": plot_coverage,
}


bp = Blueprint("dashboard", __name__)


@bp.get("/dashboard")
def page() -> str:
    """The page: tiles, plots and tables of `status.facts`, reloading itself."""
    f = status.facts(get_ledger())
    eta = f["estimate"]
    lead = f["annotation"]["overall"]["median_lead_time_s"]
    return render_template_string(
        PAGE, f=f, c=f["current"], refresh=current_app.config.get("DASHBOARD_REFRESH_S", REFRESH_S), plots=PLOTS,
        eta="done" if eta and eta["remaining"] == 0 else (eta["eta"] if eta and eta["eta"] else "n/a"),
        lead=f"{lead:g} s" if lead is not None else "n/a",
        flagged=[str(t["cluster"]) for t in f["teacher_fit"] if t["flagged"]],
        alpha=lambda a: "n/a" if a is None else f"{a:.3f}",
    )


@bp.get("/dashboard/facts.json")
def facts() -> Response:
    """The facts the page shows, as JSON."""
    return jsonify(status.facts(get_ledger()))


@bp.get("/dashboard/plot/<name>.svg")
def plot(name: str) -> Response:
    """One of the PLOTS as an SVG image."""
    if name not in DRAW:
        abort(404)
    fig = Figure(figsize=(6.4, 3.6))
    DRAW[name](status.facts(get_ledger()), fig.add_subplot())
    return Response(_svg(fig), mimetype="image/svg+xml", headers={"Cache-Control": "no-store"})


def endpoint_label() -> str:
    """The request's endpoint as /metrics labels it: a protocol route by its view (`predict`), the dashboard's
    as `dashboard.page`."""
    endpoint = request.endpoint or "unknown"
    return endpoint if request.blueprint == bp.name else endpoint.rpartition(".")[2]


class _LedgerCollector:
    """Reads the ledger at every scrape: rounds, batch progress, verdicts, teacher calls and failures."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def collect(self):
        f = status.facts(self.ledger)
        rounds = GaugeMetricFamily("labelloop_rounds", "Rounds by state", labels=["state"])
        by_state: dict[str, int] = {}
        for r in f["rounds"]:
            by_state[r["state"]] = by_state.get(r["state"], 0) + 1
        for state, n in sorted(by_state.items()):
            rounds.add_metric([state], n)
        yield rounds
        current = GaugeMetricFamily("labelloop_current_round",
                                    "Id of the round being verified, else the newest (0: none)")
        current.add_metric([], f["current"]["round"] if f["current"] else 0)
        yield current
        ahead = GaugeMetricFamily("labelloop_lookahead_rounds", "Rounds open ahead of the one being verified")
        ahead.add_metric([], len(f["lookahead"]))
        yield ahead
        batch = GaugeMetricFamily("labelloop_batch_items", "Items of the current round's batch by stage",
                                  labels=["stage"])
        for stage in ("selected", "failed", "imported", "verified", "skipped", "remaining"):
            batch.add_metric([stage], f["current"][stage] if f["current"] else 0)
        yield batch
        verdicts = GaugeMetricFamily("labelloop_verdicts", "Verified items by their latest verdict",
                                     labels=["verdict"])
        for verdict in ("accept", "edit", "reject"):
            verdicts.add_metric([verdict], sum(r[verdict] for r in f["rounds"]))
        yield verdicts
        skipped = GaugeMetricFamily("labelloop_skipped_items", "Items every assigned annotator skipped",
                                    labels=["round", "cluster"])
        for c in f["clusters"]:
            skipped.add_metric([str(c["round"]), str(c["cluster"])], c["skipped"])
        yield skipped
        skips = GaugeMetricFamily("labelloop_annotator_skips", "Skips per (anonymised) annotator",
                                  labels=["annotator"])
        for a in f["annotation"]["annotators"]:
            skips.add_metric([a["annotator"] or "unknown"], a["skips"])
        yield skips
        alpha = GaugeMetricFamily("labelloop_agreement_alpha", "Krippendorff's alpha on verdicts per round",
                                  labels=["round"])
        for r in f["agreement"]["rounds"]:
            if r["alpha"] is not None:
                alpha.add_metric([str(r["round"])], r["alpha"])
        yield alpha
        waiting = GaugeMetricFamily("labelloop_awaiting_adjudication", "Tasks awaiting a lead's verdict")
        waiting.add_metric([], len(f["adjudication"]))
        yield waiting
        usage = f["teacher"]["total"]
        for key, help_ in (("calls", "Items sent to the teacher"), ("attempts", "Teacher HTTP requests"),
                           ("failures", "Items the teacher gave no valid output for"),
                           ("prompt_tokens", "Teacher prompt tokens"),
                           ("completion_tokens", "Teacher completion tokens"), ("cost", "Teacher cost in USD")):
            family = CounterMetricFamily(f"labelloop_teacher_{key}", help_)
            family.add_metric([], usage[key])
            yield family


def register(app: Flask) -> None:
    """Add the dashboard and `/metrics` (the app's ledger, request latency per endpoint) to the app."""
    app.register_blueprint(bp)
    registry = CollectorRegistry()
    registry.register(_LedgerCollector(get_backend(app).ledger))
    latency = Histogram("labelloop_request_seconds", "Request latency by endpoint",
                        ["endpoint", "method"], registry=registry)

    @app.before_request
    def _start_timer():
        g.labelloop_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.pop("labelloop_started", None)
        if started is not None:
            latency.labels(endpoint_label(), request.method).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
