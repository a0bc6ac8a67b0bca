"""The ledger: one SQLite file holding the loop's whole state; the only package that knows table names.

`Ledger(path)` opens (and migrates) the file. It is composed of one class per table group, each in
its own module: pool (items, embeddings, clusters, scores), rounds (rounds, batches, top-ups),
teacher (cache and accounting), verifications, team (skips, tallies), models (learner versions),
events (webhooks) and reports (read-only joins for status and export); core holds the connection, transactions and
migrations, schema the numbered migrations.

Verbs mean one thing throughout: `get_*` returns a row or raises `NotFound`, `find_*` returns a row
or None, a plural noun (`rounds()`, `batch(round_id)`) returns a list, `add_*`/`put_*`/`set_*`/
`record_*` write. A compare-and-set that loses its race raises `StaleState`. Every write that must
be all-or-nothing runs in one transaction.
"""

from __future__ import annotations

from loop.errors import LedgerError, NotFound, StaleState
from loop.ledger.core import now, row_id
from loop.ledger.events import EventTables
from loop.ledger.models import ModelTables
from loop.ledger.pool import PoolTables
from loop.ledger.reports import ReportViews
from loop.ledger.rounds import RoundTables
from loop.ledger.schema import SCHEMA_VERSION
from loop.ledger.teacher import TeacherTables
from loop.ledger.team import TeamTables
from loop.ledger.verifications import VerificationTables

__all__ = ["SCHEMA_VERSION", "Ledger", "LedgerError", "NotFound", "StaleState", "now", "row_id"]


class Ledger(
    PoolTables, RoundTables, TeacherTables, VerificationTables, ModelTables, EventTables, ReportViews, TeamTables
):
    """The loop's state in one SQLite file; `Ledger(path)` creates or migrates it (idempotent)."""
