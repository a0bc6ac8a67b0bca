"""The threading policy (loop/threads.py): passive OpenMP waits and a thread count, set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loop import threads
from loop.config import load_settings
from loop.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter without inherited OpenMP settings; its stdout."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "LABELLOOP_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": ROOT, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_auto_is_every_core_this_process_may_use_and_a_bad_count_is_refused():
    assert threads.resolve("auto") == threads.available_cores() <= (os.cpu_count() or 1)
    assert threads.resolve(3) == 3
    for bad in (0, -1, True, "two"):
        with pytest.raises(ValueError, match="threads must be"):
            threads.resolve(bad)


def test_configure_before_torch_sets_the_passive_wait_and_torch_takes_the_count():
    code = ("from loop import threads; n = threads.configure(1); import os, torch;"
            " print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    assert _fresh(code) == "1 1 PASSIVE"


def test_a_policy_the_user_exported_is_kept():
    code = "from loop import threads; threads.configure(); import os; print(os.environ['OMP_WAIT_POLICY'])"
    assert _fresh(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_setting_reads_auto_or_a_count_from_file_or_environment(tmp_path, monkeypatch):
    assert load_settings(data_dir=str(tmp_path)).threads == "auto"
    monkeypatch.setenv("LABELLOOP_THREADS", "1")
    assert load_settings(data_dir=str(tmp_path)).threads == 1
    monkeypatch.setenv("LABELLOOP_THREADS", "0")
    with pytest.raises(ConfigError, match="threads"):
        load_settings(data_dir=str(tmp_path))


def test_ct2_generation_runs_one_worker_per_thread_and_leaves_torchs_count_alone(starter_model, tmp_path):
    """The translator's workers are single-threaded (loop/runtime.py); creating it set OpenMP's count to 1
    for the whole process, which made the learner's training in the same process single-threaded."""
    code = ("from loop import threads; threads.configure(2); import torch; from loop import learner, runtime;"
            " before = torch.get_num_threads();"
            f" out = learner.generate({str(starter_model)!r}, ['you idiot', 'hello there, friend'],"
            f" runtime='ct2', cache_dir={str(tmp_path)!r});"
            " t = next(iter(runtime._TRANSLATORS.values()));"
            " print(before, torch.get_num_threads(), t.num_translators, len(out))")
    before, after, workers, outputs = _fresh(code).split()
    assert before == after == workers and outputs == "2"
