"""How many threads torch and CTranslate2 use, set once at process start so that a busy machine costs
each process its fair share, not 20x to 100x.

Measured (BENCHMARKS.md, scripts/bench_load.py): OpenMP's default wait policy spins its threads while
they wait for work; when another process holds a core, a spinning thread takes the time slice its
sibling needs, and torch's generation with 2 threads on 2 cores fell from ~280 to 2.5 items/s under two
competing processes. A passive wait policy keeps the speed of all cores on a quiet machine and degrades
gracefully on a busy one. OpenMP reads its policy when the runtime loads (at `import torch` or
`import ctranslate2`), so `configure` sets environment variables and must run before either is
imported; a process that already imported torch gets its thread count changed, and a warning when the
policy can no longer be.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Threads = int | Literal["auto"]
WAIT_POLICY = "PASSIVE"  # waiting threads sleep instead of spinning on a core another process needs
_COUNT: int | None = None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resolve(setting: Threads = "auto") -> int:
    """The thread count a setting means: an int as given, "auto" every available core (see the module
    docstring: with passive waiting, all cores beat one thread on a busy machine as on a quiet one)."""
    if setting == "auto":
        return available_cores()
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', not {setting!r}")
    return setting


def configure(setting: Threads = "auto") -> int:
    """Apply the threading policy to this process and its children; returns the thread count.

    Sets OMP_WAIT_POLICY=PASSIVE (unless the environment already names a policy) and OMP_NUM_THREADS
    (an explicit setting wins over the environment; "auto" leaves a value the user exported), then
    `torch.set_num_threads` if torch is already loaded. CTranslate2 translators take the same count
    (loop.runtime reads `count()`)."""
    global _COUNT
    n = resolve(setting)
    if setting == "auto" and os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        n = int(os.environ["OMP_NUM_THREADS"])
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        if "torch" in sys.modules or "ctranslate2" in sys.modules:
            log.warning("torch was loaded before the threading policy was set: OpenMP threads keep spinning"
                        " while they wait (slow on a busy machine); export OMP_WAIT_POLICY=PASSIVE to fix it")
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    _COUNT = n
    return n


def count() -> int:
    """Threads compute should use in this process: the configured count, else what `auto` gives."""
    return _COUNT if _COUNT is not None else resolve("auto")
