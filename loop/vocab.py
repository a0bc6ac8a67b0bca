"""The loop's vocabulary, defined once: verdicts, strategies, runtimes, engines, round states, tasks.

Every other list of these names (a settings `Literal`, a `click.Choice`, a schema CHECK, a
dispatch table's keys) is derived from here, and a test checks that the dispatch tables
(`loop.select.STRATEGIES`, the runtimes in `loop.runtime`) cover exactly these names. Plain tuples,
no imports: the settings, the CLI and the web backend load this without numpy or torch.
"""

from __future__ import annotations

# What an annotator did with the teacher's draft.
VERDICTS = ("accept", "edit", "reject")
USABLE_VERDICTS = ("accept", "edit")  # the verdicts that make a training pair

# What happens at a round's close to an item every annotator assigned to it skipped: `retire` keeps it
# out of later rounds (the default: a skip says the draft or the guidelines do not serve the item, and
# sending it again costs teacher calls and annotators' time for a likely second skip); `return` puts it
# back into the pool, selectable by a later round with the newer learner.
SKIP_POLICIES = ("retire", "return")

# Why a round left `verifying`: every task settled (verified or skipped by all assigned), or its deadline.
CLOSE_REASONS = ("complete", "deadline")

# How a round picks its batch (loop/select.py): the paper's strategy first, then its baselines.
STRATEGIES = ("stratified", "random", "global_top", "cluster_random")
RANDOM_STRATEGIES = ("random", "cluster_random")  # top-ups draw at random for these, by score otherwise

# How the learner generates (loop/learner.py, loop/runtime.py).
RUNTIMES = ("hf", "ct2", "ct2-int8")

# The architectures of a starter the project builds itself (loop/starter.py): T5 for the bundled
# models/starter (the live default's family), BART for simulations (learned positions: it copies faithfully).
STARTER_ARCHS = ("t5", "bart")

# The databases a local Label Studio can run on (loop/localstudio.py; postgresql: loop/pgcluster.py).
STUDIO_DATABASES = ("sqlite", "postgresql")

# Where pool compute (embedding, interim outputs, R's scores) runs (loop/engine.py).
ENGINES = ("local", "ray")

# The round state machine (loop/rounds.py), in order.
ROUND_STATES = ("selected", "distilled", "imported", "verifying", "training", "done")

# The two generation tasks of the paper (label configs and teacher templates are named after them).
TASKS = ("style_transfer", "counter_narration")

# What one row of the teacher's accounting records.
TEACHER_CALL_STATUSES = ("ok", "retry", "invalid", "failed", "cached")

# Learner versions are "v0" (the base model), "v1", "v2", ...
BASE_VERSION = "v0"


def version_number(version: str) -> int:
    """The number of a learner version ("v12" -> 12); -1 for a name that is not of that form."""
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else -1


def version_name(number: int) -> str:
    """The learner version name for a number (12 -> "v12")."""
    return f"v{number}"
