"""The command line: `labelloop init | ingest | run | demo | status`."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from loop.config import ConfigError, Settings, load_settings
from loop.ingest import IngestError, ingest
from loop.store import Ledger

console = Console()
if not console.is_terminal:  # a redirected log gets full-width tables instead of 80 columns
    console = Console(width=160)


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances" is the one-at-a-time rule working, not a problem
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    ledger = Ledger(settings.ledger_path)
    from loop.service import ensure_pool

    try:
        counts = ensure_pool(settings, ledger)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    if counts is None:
        console.print(f"ledger {settings.ledger_path} already holds {ledger.pool_count()} pool items")
    else:
        console.print(
            f"ledger {settings.ledger_path}: {counts['added']} items added, {counts['duplicates']} duplicates"
        )


@main.command(name="ingest")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--text-col", default=None, help="Column with the text to label (default: pool.text_col).")
@click.option("--reference-col", default=None, help="Column with a reference output (optional).")
@click.option("--group-col", default=None, help="Column with a subgroup label (optional).")
@click.pass_obj
def ingest_cmd(config: str | None, path: str, text_col: str | None, reference_col: str | None,
               group_col: str | None) -> None:
    """Add a CSV, TSV, JSONL or Parquet file to the pool; all rows or none.

    \b
    Example:
      labelloop ingest comments.jsonl --text-col body --group-col target_group
    """
    settings = _settings(config)
    ledger = Ledger(settings.ledger_path)
    p = settings.pool
    try:
        counts = ingest(ledger, path, text_col=text_col or p.text_col,
                        reference_col=reference_col or p.reference_col, group_col=group_col or p.group_col)
    except IngestError as exc:
        raise click.ClickException(f"{exc} (nothing was stored)") from None
    console.print(f"{path}: read {counts['read']}, added {counts['added']}, duplicates {counts['duplicates']}")


def print_status(settings: Settings, ledger: Ledger) -> None:
    """Rounds, their progress and verdicts, and the learner's versions, as tables."""
    console.print(f"pool: {ledger.pool_count()} items, {len(ledger.unsent_pool_ids())} never sent")
    table = Table(title="rounds")
    for col in ("round", "state", "strategy", "learner", "selected", "distilled", "failed", "imported",
                "verified", "accept", "edit", "reject", "error"):
        table.add_column(col)
    for r in ledger.rounds():
        p = ledger.round_progress(r["id"])
        table.add_row(str(r["id"]), r["state"], r["strategy"], r["learner_version"],
                      *(str(p[k]) for k in ("selected", "distilled", "failed", "imported", "verified",
                                            "accept", "edit", "reject")), r["error"] or "")
    console.print(table)
    versions = Table(title="learner versions")
    for col in ("version", "parent", "round", "pairs", "train_loss", "created"):
        versions.add_column(col)
    current = ledger.get_meta("learner_version")
    for v in ledger.model_versions():
        loss = v["metrics"].get("train_loss")
        versions.add_row(v["version"] + (" *" if v["version"] == current else ""), v["parent"] or "",
                         str(v["round_id"] or ""), str(v["pairs"]), f"{loss:.3f}" if loss is not None else "",
                         v["created_at"])
    console.print(versions)


@main.command()
@click.pass_obj
def status(config: str | None) -> None:
    """Show the rounds, their progress and verdicts, and the learner's versions.

    \b
    Example:
      labelloop -c configs/local.toml status
    """
    settings = _settings(config)
    if not settings.ledger_path.exists():
        raise click.ClickException(f"no ledger at {settings.ledger_path}; run `labelloop init` first")
    print_status(settings, Ledger(settings.ledger_path))


def _serve(settings: Settings, *, demo_rounds: int | None, timeout: float) -> None:
    from loop import annotators, service
    from loop.scheduler import AlreadyRunning, Scheduler

    def _sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        services = service.start(settings)
    except (service.ServiceError, IngestError) as exc:
        raise click.ClickException(str(exc)) from None
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
        console.print(f"ML backend    {services.backend_url}")
        console.print(f"ledger        {settings.ledger_path}")
        console.print("Ctrl-C stops everything; the next run resumes where the ledger says it was.")
        if demo_rounds is None:
            while True:
                time.sleep(3600)
        rng = np.random.default_rng(settings.select.seed)
        annotated: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finished = [r for r in ctx.ledger.rounds() if r["state"] == "done"]
            if len(finished) >= demo_rounds:
                break
            if annotators.annotate_pending(ctx, rng, done=annotated):
                scheduler.poke()
            time.sleep(1)
        else:
            raise click.ClickException(f"demo: {demo_rounds} rounds did not complete within {timeout:.0f} s")
        scheduler.stop()
        print_status(settings, ctx.ledger)
        console.print(f"demo: {demo_rounds} rounds done")
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        scheduler.stop()
        service.stop(services)


@main.command()
@click.pass_obj
def run(config: str | None) -> None:
    """Start Label Studio (unless studio.url is set), the ML backend and the scheduler; Ctrl-C stops all.

    \b
    Example:
      labelloop -c configs/local.toml run
    """
    _serve(_settings(config), demo_rounds=None, timeout=0)


@main.command()
@click.option("--rounds", default=2, show_default=True, help="Rounds to complete before exiting.")
@click.option("--timeout", default=1800.0, show_default=True, help="Give up after this many seconds.")
@click.pass_obj
def demo(config: str | None, rounds: int, timeout: float) -> None:
    """Like `run`, with simulated annotators verifying in Label Studio; exits after --rounds rounds.

    \b
    Example:
      labelloop -c configs/local.toml demo --rounds 2
    """
    settings = _settings(config)
    done = len([r for r in Ledger(settings.ledger_path).rounds() if r["state"] == "done"]) \
        if Path(settings.ledger_path).exists() else 0
    settings.select.max_rounds = done + rounds
    _serve(settings, demo_rounds=done + rounds, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
