"""The house rules that keep the code base in shape: one vocabulary, one error tree, no import circles."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from loop import errors, runtime, select, vocab
from loop.cli import main
from loop.config import LearnerSettings, SelectSettings, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_dispatch_tables_cover_exactly_the_vocabulary():
    assert set(select.STRATEGIES) == set(vocab.STRATEGIES)
    assert set(vocab.RANDOM_STRATEGIES) <= set(vocab.STRATEGIES)
    assert {"hf", *runtime._COMPUTE} == set(vocab.RUNTIMES)
    assert set(vocab.TASKS) == {p.stem for p in (ROOT / "label_config").glob("*.xml")}


def test_settings_and_cli_take_their_choices_from_the_vocabulary():
    assert SelectSettings.model_fields["strategy"].annotation.__args__ == vocab.STRATEGIES
    assert LearnerSettings.model_fields["runtime"].annotation.__args__ == vocab.RUNTIMES
    assert Settings.model_fields["task"].annotation.__args__ == vocab.TASKS
    choices = {p.name: p.type.choices for cmd in main.commands.values() for p in cmd.params
               if hasattr(p.type, "choices")}
    assert tuple(choices["verdicts"]) == vocab.VERDICTS
    assert tuple(choices["strategies"]) == vocab.STRATEGIES
    assert tuple(choices["runtime"]) == vocab.RUNTIMES


@pytest.mark.parametrize(("name", "number"), [("v0", 0), ("v12", 12), ("v", -1), ("x3", -1), ("v1a", -1)])
def test_version_numbers_are_parsed_in_one_place(name, number):
    assert vocab.version_number(name) == number
    if number >= 0:
        assert vocab.version_name(number) == name


def test_every_error_raised_on_purpose_has_one_root():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 15
    assert all(issubclass(c, errors.LabelloopError) for c in classes)
    # every exception class defined anywhere in loop/ is in that tree (private control-flow ones aside)
    for path in set((ROOT / "loop").rglob("*.py")) - {ROOT / "loop" / "errors.py"}:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & {"Exception", "ValueError", "RuntimeError"}, f"{path}: {node.name}"


def test_the_cli_prints_a_labelloop_error_as_one_line_without_a_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[select]\nstrategy = 'clever'\n")
    result = CliRunner().invoke(main, ["-c", str(config), "status"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "strategy" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["-c", str(tmp_path / "missing.toml"), "models"])
    assert result.exit_code == 1 and "config file not found" in result.output


def test_learner_and_runtime_do_not_import_each_other_and_identity_needs_no_torch():
    for module, other in (("runtime", "loop.learner"), ("checkpoint", "loop.learner")):
        tree = ast.parse((ROOT / "loop" / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert other not in imported, f"loop/{module}.py imports {other}"
    code = ("import sys, loop.checkpoint, loop.runtime, loop.vocab, loop.ledger, loop.errors;"
            "print('torch' in sys.modules, 'openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_only_the_ledger_knows_table_names():
    tables = {"pool", "embeddings", "clusters", "scores", "rounds", "batch_items", "teacher_cache",
              "teacher_calls", "batch_topups", "verifications", "verification_history", "model_versions", "events"}
    for path in [*(ROOT / "loop").glob("*.py"), *(ROOT / "ml_backend").glob("*.py")]:
        text = path.read_text()
        for table in tables:
            for verb in ("FROM", "INTO", "UPDATE", "JOIN"):
                assert f"{verb} {table} " not in text and f"{verb} {table}(" not in text, f"{path}: {verb} {table}"
