"""The command line: `labelloop init | ingest | run | demo | status | deadline | ...`."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from loop import threads
from loop.config import Settings, load_settings
from loop.errors import IngestError, LabelloopError
from loop.ingest import ingest
from loop.ledger import Ledger
from loop.vocab import RUNTIMES, STARTER_ARCHS, STRATEGIES, TASKS, USABLE_VERDICTS, VERDICTS, version_number

console = Console()
if not console.is_terminal:  # a redirected log gets full-width tables instead of 80 columns
    console = Console(width=160)


def _settings(config: str | None) -> Settings:
    settings = load_settings(config)
    threads.configure(settings.threads)  # before any command loads torch
    return settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances" is the one-at-a-time rule working, not a problem
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


class _Commands(click.Group):
    """The command group: a LabelloopError from any command is printed as one line, without a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LabelloopError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", envvar="LABELLOOP_CONFIG", type=click.Path(dir_okay=False),
              help="TOML settings file (env LABELLOOP_CONFIG). Environment LABELLOOP_<SECTION>__<FIELD> overrides it.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """labelloop: active learning for generative labeling in Label Studio (arXiv 2410.13641).

    \b
    Example:
      labelloop -c configs/local.toml run
    """
    _logging(verbose)
    threads.configure()  # commands without settings (simulate) too; `_settings` applies the configured count
    ctx.obj = config


@main.command()
@click.pass_obj
def init(config: str | None) -> None:
    """Create the ledger and ingest the configured pool file (idempotent).

    \b
    Example:
      labelloop -c configs/local.toml init
    """
    settings = _settings(config)
    new = not settings.ledger_path.exists()
    ledger = Ledger(settings.ledger_path)
    from loop.service import ensure_pool

    try:
        counts = ensure_pool(settings, ledger)
    except LabelloopError:
        if new:  # a failed first init leaves no empty ledger that a later one would take as initialised
            ledger.remove()
        raise
    if counts is None:
        console.print(f"ledger {settings.ledger_path} already holds {ledger.pool_count()} pool items")
    else:
        console.print(f"ledger {settings.ledger_path}: {ingest_summary(settings.pool.path, counts)}")


def ingest_summary(path: str | Path, counts: dict) -> str:
    """One line of what an ingest did: rows read, items added, merged and duplicate rows, what was stored."""
    if "removed" in counts:
        what = (f"added {counts['added']}, updated {counts['updated']}, unchanged {counts['unchanged']}, removed"
                f" {counts['removed']}")
        if counts["kept"]:
            what += f", kept {counts['kept']} that are not in the file but were sent to Label Studio"
    else:
        what = f"added {counts['added']}"
    merged = f", merged {counts['merged']}" if counts.get("merged") else ""
    how = "".join(f", {k} {counts[k]!r}" for k in ("encoding", "delimiter") if k in counts)  # read other than usual
    return (f"{path}: read {counts['read']}, {what}{merged}, duplicates {counts['duplicates']}{how}; stored"
            f" {counts['references']} references, {counts['groups']} group memberships")


@main.command(name="ingest")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--text-col", default=None, help="Column with the text to label (default: pool.text_col).")
@click.option("--reference-col", multiple=True,
              help="Column with a reference output; repeat it for several (default: pool.reference_col).")
@click.option("--group-col", multiple=True, help="Column with a subgroup label; repeat it for several (optional).")
@click.option("--group-sep", default=None, help="Splits one group cell into several groups, e.g. '|'.")
@click.option("--encoding", default=None,
              help="The file's text encoding, e.g. cp1252 or latin-1 (default: pool.encoding, else UTF-8 or its BOM).")
@click.option("--replace", is_flag=True,
              help="Make the pool this file: repairs an ingest with wrong columns; keeps what annotators saw.")
@click.option("--dry-run", is_flag=True, help="Read the file and say what would change; store nothing.")
@click.pass_obj
def ingest_cmd(config: str | None, path: str, text_col: str | None, reference_col: tuple[str, ...],
               group_col: tuple[str, ...], group_sep: str | None, encoding: str | None, replace: bool,
               dry_run: bool) -> None:
    """Add a CSV, TSV, JSONL or Parquet file to the pool; all rows or none.

    A text already in the pool (or repeated in the file) stays one item and keeps every distinct
    reference and group its rows bring.

    \b
    Examples:
      labelloop ingest comments.jsonl --text-col body --group-col target_group
      labelloop ingest conan.csv --reference-col cn1 --reference-col cn2 --group-col target
      labelloop ingest conan.csv --text-col hate_speech --replace --dry-run
    """
    settings = _settings(config)
    ledger = Ledger(settings.ledger_path)
    options = settings.pool.read_options()
    options.update({k: v for k, v in (("text_col", text_col), ("reference_col", list(reference_col)),
                                      ("group_col", list(group_col)), ("group_sep", group_sep),
                                      ("encoding", encoding)) if v})
    try:
        counts = ingest(ledger, path, replace=replace, dry_run=dry_run, **options)
    except IngestError as exc:  # all rows or none: say so, since a partial store is what people fear
        raise IngestError(f"{exc} (nothing was stored)") from None
    console.print(ingest_summary(path, counts) + (" (dry run: nothing was stored)" if dry_run else ""))
    if not replace and counts["added"] == 0:
        console.print("no new text: to correct how the pool was read before (columns, encoding), run this"
                      " command with --replace (--dry-run first shows what it changes)")


def print_status(settings: Settings, ledger: Ledger) -> None:
    """The project manager's view (loop/status.py's facts) as tables: the same numbers as /dashboard."""
    from loop import status as status_mod

    facts = status_mod.facts(ledger)

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.0f}%"

    def show(title: str, columns: list[str], rows: list[list]) -> None:
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)

    pool, current, eta = facts["pool"], facts["current"], facts["estimate"]
    console.print(f"pool: {pool['items']} items, {pool['never_sent']} never sent")
    if current is None:
        console.print("no round yet")
    else:
        line = (f"current round {current['round']}: {current['state']}, verified "
                f"{current['verified']}/{current['imported']}, "
                + (f"{current['adjudicate']} awaiting adjudication, " if current["adjudicate"] else "")
                + f"{current['skipped']} skipped,"
                f" {current['remaining']} remaining")
        if current["deadline"] and current["state"] in ("imported", "verifying"):
            line += f"; closes at its deadline {current['deadline']}"
        if eta is not None:
            line += (f"; at {eta['per_hour']} per hour done by {eta['eta']}" if eta["eta"] else
                     "; no pace yet to estimate completion")
        console.print(line)
        for ahead in facts["lookahead"]:
            console.print(f"look-ahead round {ahead['round']}: {ahead['state']}, verified {ahead['verified']}/"
                          f"{ahead['imported']}, {ahead['remaining']} remaining (selected by learner"
                          f" {ahead['learner_version']}; it closes after round {current['round']})")
    show("rounds", ["round", "state", "closed", "strategy", "learner", "teacher", "selected", "failed", "imported",
                    "verified", "to adjudicate", "skipped", "returned", "remaining", "accept", "edit", "reject",
                    "error"],
         [[r["round"], r["state"] + (" (look-ahead)" if r["lookahead"] else ""), r["closed"], r["strategy"],
           r["learner_version"], r["teacher"], r["selected"],
           r["failed"], r["imported"], r["verified"], r["adjudicate"], r["skipped"], r["returned"], r["remaining"],
           pct(r["accept_rate"]), pct(r["edit_rate"]), pct(r["reject_rate"]), r["error"]] for r in facts["rounds"]])
    show("clusters per round", ["round", "cluster", "selected", "imported", "verified", "skipped", "remaining",
                                "accept", "edit", "reject", "skip rate"],
         [[c["round"], c["cluster"], c["selected"], c["imported"], c["verified"], c["skipped"], c["remaining"],
           pct(c["accept_rate"]), pct(c["edit_rate"]), pct(c["reject_rate"]), pct(c["skip_rate"])]
          for c in facts["clusters"]])
    threshold = facts["reject_threshold"]
    show(f"teacher rejection per cluster (flagged above {pct(threshold)})", ["cluster", "verified", "rejected",
                                                                             "rate", "flag"],
         [[t["cluster"], t["verified"], t["reject"], pct(t["reject_rate"]),
           "[bold red]teacher does not suit this cluster[/]" if t["flagged"] else ""] for t in facts["teacher_fit"]])
    cov = facts["coverage"]
    show("coverage of the labeled set", ["cluster / subgroup", "pool", "selected", "labeled", "coverage"],
         [[f"cluster {c['cluster']}", c["pool"], c["selected"], c["labeled"], pct(c["coverage"])]
          for c in cov["clusters"]]
         + [[f"subgroup {s['subgroup']}", s["pool"], s["selected"], s["labeled"], pct(s["coverage"])]
            for s in cov["subgroups"]])
    ann = facts["annotation"]
    show("annotators (anonymised)", ["annotator", "annotations", "skips", "median lead time (s)", "per hour"],
         [[a["annotator"], a["annotations"], a["skips"], a["median_lead_time_s"], a["per_hour"]]
          for a in ann["annotators"]]
         + [["all", ann["overall"]["annotations"], ann["overall"]["skips"], ann["overall"]["median_lead_time_s"],
             ann["overall"]["per_hour"]]])
    agree = facts["agreement"]

    def alpha(a: float | None) -> str:
        return "n/a" if a is None else f"{a:.3f}"

    show(f"agreement on verdicts (Krippendorff's alpha; {facts['team']['overlap']} annotations wanted per task)",
         ["scope", "tasks two or more verified", "alpha", "agreed"],
         [["all", agree["overall"]["units"], alpha(agree["overall"]["alpha"]), ""]]
         + [[f"round {r['round']}", r["units"], alpha(r["alpha"]), ""] for r in agree["rounds"]]
         + [[f"cluster {c['cluster']}", c["units"], alpha(c["alpha"]), ""] for c in agree["clusters"]]
         + [[" & ".join(p["pair"]), p["units"], alpha(p["alpha"]), p["agree"]] for p in agree["pairs"]])
    if facts["adjudication"]:
        show("awaiting adjudication (a tie or a split: a lead's annotation decides)",
             ["round", "cluster", "task", "votes", "open in Label Studio"],
             [[a["round"], a["cluster"], a["task_id"], a["votes"], a["link"]] for a in facts["adjudication"]])
    usage = facts["teacher"]
    show("teacher usage", ["round", "calls", "attempts", "failures", "cached", "prompt tokens",
                           "completion tokens", "cost (USD)"],
         [[r, u["calls"], u["attempts"], u["failures"], u["cached"], u["prompt_tokens"], u["completion_tokens"],
           f"{u['cost']:.4f}"] for r, u in [*usage["rounds"].items(), ("all", usage["total"])]])
    if facts["r_attributes"]:
        show("R's attributes over each round's selected items (normalised, weighted)",
             ["round", "attribute", "weight", "mean raw score", "mean contribution", "share"],
             [[a["round"], a["attribute"], f"{a['weight']:g}", f"{a['mean_score']:.3f}",
               f"{a['mean_contribution']:.3f}", pct(a["share"])] for a in facts["r_attributes"]])
    # scalar metrics only (losses, epochs, seconds): lists and paths belong to `labelloop models`
    metric_names = sorted({k for v in facts["learners"] for k, x in v["metrics"].items()
                           if isinstance(x, int | float) and not isinstance(x, bool) and k != "pairs"})
    show("learner versions (* = current)",
         ["version", "parent", "round", "pairs", *metric_names, "status", "gate", "created"],
         [[v["version"] + (" *" if v["current"] else ""), v["parent"], v["round"], v["pairs"],
           *(_metric(v["metrics"].get(m)) for m in metric_names), v["status"] or "", v["note"] or "",
           v["created_at"]] for v in facts["learners"]])


def _metric(value: object) -> str:
    """A learner metric for a table cell: floats to 3 decimals."""
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


@main.command()
@click.pass_obj
def status(config: str | None) -> None:
    """Show the rounds, their progress and verdicts, and the learner's versions.

    \b
    Example:
      labelloop -c configs/local.toml status
    """
    settings = _settings(config)
    print_status(settings, _ledger_or_fail(settings))


@main.command()
@click.argument("round_id", type=int)
@click.option("--hours", type=click.FloatRange(min=0), help="close the round this many hours from now")
@click.option("--clear", is_flag=True, help="remove the deadline: the round waits for every task")
@click.pass_obj
def deadline(config: str | None, round_id: int, hours: float | None, clear: bool) -> None:
    """Set or clear when a round closes with what is verified (the rest stays in Label Studio).

    \b
    Example:
      labelloop deadline 3 --hours 2
      labelloop deadline 3 --clear
    """
    from datetime import datetime, timedelta, timezone

    if (hours is None) == (not clear):
        raise click.UsageError("give --hours H or --clear")
    ledger = _ledger_or_fail(_settings(config))
    rnd = ledger.get_round(round_id)
    if rnd["state"] in ("training", "done"):
        raise click.UsageError(f"round {round_id} is already closed ({rnd['state']}); a deadline changes nothing")
    at = None if clear else (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat(timespec="seconds")
    ledger.set_round_deadline(round_id, at)
    console.print(f"round {round_id}: " + (f"closes at {at}" if at else "no deadline"))


def _serve(settings: Settings, *, demo_rounds: int | None, timeout: float, with_backend: bool = True) -> None:
    from loop import annotators, service
    from loop.scheduler import Scheduler

    def _sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    services = service.start(settings, with_backend=with_backend)
    ctx = services.ctx
    scheduler = Scheduler(ctx)  # each step is logged by loop.rounds
    try:
        scheduler.start()
        console.rule("labelloop is running")
        console.print(f"Label Studio  {services.studio_url}/projects/{ctx.project_id}")
        if services.local_studio is not None:
            local = services.local_studio
            # the password goes to an interactive terminal only, never into a redirected log
            secret = local.password if sys.stdout.isatty() else f"(in {local.data_dir / 'credentials.json'})"
            console.print(f"  login       {local.username} / {secret}")
            if local.postgres is not None:
                console.print(f"  database    PostgreSQL on 127.0.0.1:{local.postgres.port} ({local.postgres.path})")
        console.print(f"ML backend    {services.backend_url}")
        console.print(f"ledger        {settings.ledger_path}")
        console.print("Ctrl-C stops everything; the next run resumes where the ledger says it was.")
        if demo_rounds is None:
            while not scheduler.done.wait(1.0):  # until a permanent error, Ctrl-C or SIGTERM
                pass
        else:
            annotators.verify_until_done(ctx, demo_rounds, timeout=timeout, seed=settings.select.seed,
                                         on_annotated=scheduler.poke, stopped=lambda: scheduler.stopped_with)
        if scheduler.stopped_with is not None:
            raise LabelloopError(f"stopped: {scheduler.stopped_with}")
        scheduler.stop()
        print_status(settings, ctx.ledger)
        console.print(f"demo: {demo_rounds} rounds done")
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        scheduler.stop()
        service.stop(services)


@main.command()
@click.option("--no-backend", is_flag=True,
              help="The ML backend is served elsewhere (gunicorn); connect to backend.public_url instead.")
@click.pass_obj
def run(config: str | None, no_backend: bool) -> None:
    """Start Label Studio (unless studio.url is set), the ML backend and the scheduler; Ctrl-C stops all.

    \b
    Example:
      labelloop -c configs/local.toml run
    """
    _serve(_settings(config), demo_rounds=None, timeout=0, with_backend=not no_backend)


@main.command()
@click.option("--rounds", default=2, show_default=True, help="Rounds to complete before exiting.")
@click.option("--timeout", default=1800.0, show_default=True, help="Give up after this many seconds.")
@click.option("--team", "team_size", default=2, show_default=True, type=click.IntRange(min=1),
              help="Simulated annotators; each task wants this many (overlap), and with 2 or more one task is skipped.")
@click.pass_obj
def demo(config: str | None, rounds: int, timeout: float, team_size: int) -> None:
    """Like `run`, with simulated annotators verifying in Label Studio; exits after --rounds rounds.

    \b
    Example:
      labelloop -c configs/local.toml demo --rounds 2
      labelloop -c configs/local.toml demo --rounds 2 --team 1
    """
    settings = _settings(config)
    settings.team.overlap = team_size
    done = len([r for r in Ledger(settings.ledger_path).rounds() if r["state"] == "done"]) \
        if Path(settings.ledger_path).exists() else 0
    settings.select.max_rounds = done + rounds
    _serve(settings, demo_rounds=done + rounds, timeout=timeout)


def _ledger_or_fail(settings: Settings) -> Ledger:
    if not settings.ledger_path.exists():
        raise click.ClickException(f"no ledger at {settings.ledger_path}; run `labelloop init` first")
    return Ledger(settings.ledger_path)


@main.command()
@click.option("--dry-run", is_flag=True, help="Fit and say how many items would change cluster; store nothing.")
@click.pass_obj
def recluster(config: str | None, dry_run: bool) -> None:
    """Fit the clusters again on the whole pool, as a new clustering version.

    Cluster ids otherwise never change: items ingested later join the nearest cluster. Refit when the
    pool has grown into regions the first clustering did not see. The new ids are matched to the old
    clusters they overlap most, and statistics such as the teacher's rejection rate per cluster count
    only rounds selected under the current version.

    \b
    Example:
      labelloop -c configs/local.toml recluster --dry-run
    """
    from loop import rounds

    settings = _settings(config)
    ledger = _ledger_or_fail(settings)
    current = ledger.find_current_round()
    if current is not None and current["state"] == "selected":
        raise LabelloopError(f"round {current['id']} is being distilled; recluster once it is imported")
    result = rounds.recluster(rounds.Context(settings, ledger, progress=True), dry_run=dry_run)
    what = "would move" if dry_run else f"clustering version {result['version']}:"
    console.print(f"{what} {result['moved']} of {result['items']} items to another cluster ({result['k']} clusters)"
                  + (" (dry run: nothing was stored)" if dry_run else ""))


@main.command()
@click.pass_obj
def models(config: str | None) -> None:
    """List the learner's versions: metrics, gate verdict, which one is in use, which are pruned.

    \b
    Example:
      labelloop -c configs/local.toml models
    """
    ledger = _ledger_or_fail(_settings(config))
    current = (ledger.find_current_model() or {}).get("version")
    table = Table(title="learner versions (* = in use)")
    for col in ("version", "parent", "round", "pairs", "train loss", "gate loss", "status", "on disk", "note"):
        table.add_column(col)
    rows = sorted(ledger.model_versions(), key=lambda v: version_number(v["version"]))
    for v in rows:
        m = v["metrics"]
        table.add_row(v["version"] + (" *" if v["version"] == current else ""), v["parent"] or "",
                      "" if v["round_id"] is None else str(v["round_id"]), str(v["pairs"]),
                      _metric(m.get("train_loss")), _metric(m.get("gate_loss", m.get("dev_loss"))),
                      v.get("status") or "", "no" if v.get("pruned") else "yes", v.get("note") or "")
    console.print(table)


@main.command()
@click.argument("version")
@click.pass_obj
def rollback(config: str | None, version: str) -> None:
    """Make VERSION the learner in use (an earlier one, or one the gate held back).

    The next round scores the pool with it; versions trained later stay in the ledger.

    \b
    Example:
      labelloop -c configs/local.toml rollback v2
    """
    from loop import versions

    settings = _settings(config)
    row = versions.rollback(_ledger_or_fail(settings), version, settings.models_dir)
    console.print(f"learner {row['version']} is now in use ({row['path']})")


@main.command(name="export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "hf"]), default="jsonl",
              show_default=True, help="hf = a Hugging Face `datasets` directory (save_to_disk).")
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output file (a directory for hf or with --split).")
@click.option("--round", "rounds", type=int, multiple=True, help="Only these rounds (repeatable).")
@click.option("--verdict", "verdicts", type=click.Choice(VERDICTS), multiple=True,
              help="Only these verdicts (repeatable; default accept and edit: the usable pairs).")
@click.option("--all-verdicts", is_flag=True, help="Include rejected items too (their target is empty).")
@click.option("--split", default=None, help="Train/dev/test fractions, e.g. 0.8,0.1,0.1 (or train/test: 0.9,0.1).")
@click.option("--seed", default=0, show_default=True, help="Seed of the split (a seeded hash of each item's id).")
@click.option("--stratify", is_flag=True,
              help="Give every subgroup the split's shares exactly (a later export may then move items between"
                   " splits; without it an item keeps its split for good).")
@click.option("--allow-empty-splits", is_flag=True,
              help="Write a split that received no record instead of refusing (with few verified items).")
@click.option("--from-studio", is_flag=True,
              help="Read the annotations straight from the Label Studio project (studio.url, studio.project_id,"
                   " LABEL_STUDIO_API_KEY) instead of the ledger.")
@click.pass_obj
def export_cmd(config: str | None, fmt: str, out: str, rounds: tuple[int, ...], verdicts: tuple[str, ...],
               all_verdicts: bool, split: str | None, seed: int, stratify: bool, allow_empty_splits: bool,
               from_studio: bool) -> None:
    """Export the verified dataset with provenance; the same ledger always gives byte-identical files.

    \b
    Examples:
      labelloop export --format jsonl -o verified.jsonl
      labelloop export --format hf -o verified_hf --split 0.8,0.1,0.1 --seed 13
      labelloop export --format jsonl -o splits --split 0.8,0.2 --stratify
      labelloop export --format csv -o rejects.csv --verdict reject --round 2
    """
    from loop import export

    settings = _settings(config)
    chosen = None if all_verdicts else (list(verdicts) or list(USABLE_VERDICTS))
    ratios = export.parse_split(split) if split else None
    if stratify and not ratios:
        raise LabelloopError("--stratify applies to a split: add --split, e.g. --split 0.8,0.2")
    if from_studio:
        records = _studio_records(settings, rounds, chosen)
    else:
        records = export.from_ledger(_ledger_or_fail(settings), rounds=list(rounds) or None, verdicts=chosen)
    data = (export.assign_splits(records, ratios, seed, allow_empty=allow_empty_splits, stratify=stratify)
            if ratios else records)
    paths = export.write(data, out, fmt)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.items()) if isinstance(data, dict) else f"{len(records)}"
    console.print(f"exported {sizes} records as {fmt} to {', '.join(str(p) for p in paths)}")


def _studio_records(settings: Settings, rounds: tuple[int, ...], verdicts: list[str] | None) -> list[dict]:
    """Export records read from the configured Label Studio project (the salt comes from the ledger)."""
    from loop import export
    from loop.studio import Studio

    key = settings.label_studio_api_key
    if settings.studio.url is None or settings.studio.project_id is None or key is None:
        raise click.ClickException("--from-studio needs studio.url and studio.project_id in the settings and"
                                   " LABEL_STUDIO_API_KEY in the environment")
    salt = Ledger(settings.ledger_path).annotator_salt()
    return export.from_studio(Studio(settings.studio.url, key.get_secret_value()), settings.studio.project_id,
                              salt=salt, rounds=list(rounds) or None, verdicts=verdicts)


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """Parse "0,1,2" into [0, 1, 2] for --seeds and --k."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 0,1,2") from None


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Pool file (CSV, TSV, JSONL, Parquet) with a text and a reference column.")
@click.option("--text-col", default="text", show_default=True, help="Column with the input text.")
@click.option("--task", default="style-transfer", show_default=True,
              type=click.Choice([t.replace("_", "-") for t in TASKS]), callback=lambda c, p, v: v.replace("-", "_"),
              help="The template, what counts as a failure and the report's wording (counter-narration: relevance"
                   " to the input, copy share and offensiveness, not chrF).")
@click.option("--instruction/--no-instruction", default=False, show_default=True,
              help="Give the learner the task template's instruction around each input (for instruction-tuned"
                   " learners such as FLAN-T5; the starter was trained on bare texts).")
@click.option("--reference-col", multiple=True, default=["reference"], show_default=True,
              help="Column with a reference output; repeat it for several. The first plays the teacher; every one"
                   " grades the test split.")
@click.option("--group-col", default=None, help="Subgroup column for the error-ratio variance (default: clusters).")
@click.option("--tag-groups", is_flag=True,
              help="No group column: tag the target group each text mentions (a tagger trained on the bundled"
                   " ToxiGen demonstrations) and use those groups instead of the clusters.")
@click.option("--out", "out_dir", default="simulate-out", show_default=True, type=click.Path(file_okay=False),
              help="Where results.json, curves.png, groups.png and report.md go.")
@click.option("--learner", default="models/starter", show_default=True,
              help="Seq2seq checkpoint every run starts from (ignored with --starter).")
@click.option("--starter", default=None, metavar="pool|build[:N]",
              help="Build the starter for this data instead (a small BART or T5, --starter-arch, loop/starter.py;"
                   " cached in --cache-dir)."
                   " pool: self-supervised, it learns only to copy the pool's texts, so all it knows of the task"
                   " comes from the budget. build:N: trained on N pairs of --data (default 400) kept out of pool"
                   " and test. Its tokenizer never sees the test split.")
@click.option("--starter-steps", default=600, show_default=True, help="Training steps of a built starter.")
@click.option("--starter-width", default=128, show_default=True,
              help="d_model of a built starter, a multiple of 32 from 64 (128: about 1.5 M parameters;"
                   " 256: about 5 M).")
@click.option("--starter-arch", type=click.Choice(STARTER_ARCHS), default="bart", show_default=True,
              help="Architecture of a built starter. bart: learned positions, it copies faithfully at this size"
                   " (pool starter on ParaDetox: chrF 70.7); t5: the live default's family, which copies poorly"
                   " this small (55.8).")
@click.option("--second-learner", default=None, metavar="width:W|ARCH:W|DIR",
              help="A learner outside the loop, fine-tuned once on each run's acquired pairs and tested the same"
                   " way (does the data help another model?): width:W builds it as --starter does at width W,"
                   " t5:W or bart:W as that architecture, or give a seq2seq checkpoint directory.")
@click.option("--group-test", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Texts with a real group column (no reference needed, e.g. data/toxigen/demonstrations.tsv):"
                   " every final learner is also scored on them, failing where the judge finds its output"
                   " offensive, and the report tests the spread of failures across those groups.")
@click.option("--group-test-group-col", default="group", show_default=True, help="The --group-test group column.")
@click.option("--group-test-where", default=None, metavar="COL=VALUE",
              help="Only the --group-test rows whose COL is VALUE (e.g. stance=hate).")
@click.option("--strategy", "strategies", multiple=True,
              type=click.Choice(STRATEGIES),
              help="Strategies to compare (repeatable; default all four).")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, callback=_int_list,
              help="Comma-separated seeds (at least 5 for the sign test over seeds to mean anything).")
@click.option("--rounds", default=5, show_default=True, help="Rounds per run.")
@click.option("--budget", default=40, show_default=True, help="Items selected per round (N).")
@click.option("--k", default="8", show_default=True, callback=_int_list,
              help="KMeans clusters (K). Several (4,8,16): the first is the main run's; stratified runs again at"
                   " each, tested against random (the other strategies run once).")
@click.option("--pool-size", default=2000, show_default=True, help="Selectable pool items.")
@click.option("--test-size", default=400, show_default=True, help="Held-out test items (never selected).")
@click.option("--test-data", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A dataset's own test split (same columns); default: held out from --data.")
@click.option("--max-new-tokens", default=48, show_default=True,
              help="Longest output the learner writes, in tokens (counter-narratives run longer than rewrites).")
@click.option("--examples", default=8, show_default=True, help="Test items whose outputs the report shows.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the pool/test split and the clustering.")
@click.option("--reject-rate", default=0.0, show_default=True, help="Share of selected items the verifier rejects.")
@click.option("--judge", default="probe", show_default=True,
              help="Offensiveness judge: probe (embedding probe on --judge-data), profanity (= R: biased), "
                   "or a probe file.")
@click.option("--judge-data", default="data/paradetox/starter.tsv", show_default=True,
              type=click.Path(dir_okay=False), help="Labelled texts for the judge probe (text = 1, reference = 0).")
@click.option("--chrf-threshold", default=30.0, show_default=True,
              help="An output with sentence chrF below this counts as a failure.")
@click.option("--epochs", default=4, show_default=True, help="Fine-tuning epochs per round.")
@click.option("--lr", default=3e-4, show_default=True, help="Fine-tuning learning rate.")
@click.option("--regime", default="retrain", show_default=True, type=click.Choice(["retrain", "continue"]),
              help="retrain: from the starter each round (the paper); continue: from the last round's learner.")
@click.option("--optimizer", default="adamw", show_default=True, type=click.Choice(["adamw", "adafactor"]),
              help="Fine-tuning optimizer.")
@click.option("--warmup", default=0.1, show_default=True, help="Share of steps with linear warm-up, then decay.")
@click.option("--weight-decay", default=0.01, show_default=True, help="Weight decay (never on norms or biases).")
@click.option("--runtime", default="ct2", show_default=True, type=click.Choice(RUNTIMES),
              help="Generation runtime (ct2 = CTranslate2 float32: same greedy outputs as hf, faster).")
@click.option("--candidates-per-cluster", type=click.IntRange(min=1), default=None,
              help="Score a random sample of this many unsent items per cluster each round (default: all).")
@click.option("--lookahead", default=0, show_default=True, type=click.IntRange(min=0),
              help="Select each round with the learner of L rounds before the newest, as the live loop's"
                   " team.lookahead does (1: round r+1 is scored by round r-1's learner).")
@click.option("--cache-dir", default=".labelloop/cache", show_default=True, type=click.Path(file_okay=False),
              help="Where the judge probe and built starters are cached (keyed by their data's digest).")
@click.option("--quick", is_flag=True,
              help="A small fast run (pool 200, test 60, 2 rounds of 16, K 4 (a sweep's other K stay), 1 epoch, a"
                   " built starter's 150 steps), overriding those options.")
def simulate(**opts: object) -> None:
    """Reproduce the paper offline: strategies side by side, the paper's metrics, plots and a report.

    The reference column plays the teacher, a simulated verifier accepts (or rejects at --reject-rate),
    and every (strategy, seed) retrains the learner from the starter on its accepted pairs each round.

    \b
    Example:
      labelloop simulate --data data/paradetox/pool.tsv --text-col text --reference-col reference \\
        --rounds 5 --budget 40 --seeds 0,1,2,3,4 --out docs/simulate
      labelloop simulate --data data/paradetox/pool.tsv --quick --out /tmp/sim
      labelloop simulate --data data/paradetox/pool.tsv --starter build:400 --out /tmp/sim-built
      labelloop simulate --data data/paradetox/pool.tsv --quick --k 4,8,16 --out /tmp/sim-k
    """
    from loop.simulate import QUICK, SimConfig, run

    ks = opts.pop("k")
    if not ks:
        raise click.BadParameter("give at least one K", param_hint="--k")
    opts.update(k=ks[0], k_sweep=ks if len(ks) > 1 else [])  # type: ignore[index]
    if opts.pop("quick"):
        opts.update(QUICK)
    opts["strategies"] = list(opts["strategies"]) or list(STRATEGIES)
    refs = list(opts.pop("reference_col"))  # type: ignore[call-overload]
    cfg = SimConfig(**opts, reference_col=refs[0] if len(refs) == 1 else refs, progress=True)
    result = run(cfg, command="labelloop " + " ".join(sys.argv[1:]))
    console.print(f"simulate: {len(result['records'])} evaluations in {result['timings']['total_s'] / 60:.1f} min; "
                  f"report {Path(cfg.out_dir) / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
