"""The teacher: templates, the real openai client against a local server, the cache, the reference teacher."""

from __future__ import annotations

import logging

import pytest

from loop import teacher
from loop.store import Ledger
from tests.openai_server import FakeOpenAI, rewrite

SECRET = "sk-test-never-log-this-0123456789"


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.sqlite")


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as server:
        yield server


def items(*texts):
    return [{"pool_id": i + 1, "text": t, "reference": f"ref {i + 1}"} for i, t in enumerate(texts)]


@pytest.mark.parametrize("task", ["style_transfer", "counter_narration"])
def test_bundled_templates_render_the_text(task):
    template = teacher.load_template(task)
    assert template.name == task and template.version
    assert "you are an idiot" in template.render(text="you are an idiot")


def test_render_names_the_missing_field():
    template = teacher.load_template("style_transfer")
    with pytest.raises(teacher.TemplateError, match="field.*text.*missing"):
        template.render(other="x")


@pytest.mark.parametrize(
    "content, message",
    [
        ("name: x\nversion: 1\nno separator {text}", "no '---' line"),
        ("name: x\n---\nbody {text}", "'version' is missing"),
        ("name: x\nversion 1\n---\nbody {text}", ":2: expected 'key: value'"),
        ("name: x\nversion: 1\n---\nbody {text", "not a valid template"),
    ],
)
def test_malformed_template_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(teacher.TemplateError, match=message):
        teacher.load_template("style_transfer", path)


def test_openai_teacher_distills_through_a_real_client_and_caches(ledger, fake_openai, caplog):
    caplog.set_level(logging.DEBUG)
    t = teacher.OpenAITeacher(model="gpt-test", api_key=SECRET, base_url=fake_openai.base_url, concurrency=4)
    template = teacher.load_template("style_transfer")
    batch = items("You are a moron", "what a stupid idea", "shut up already")

    first = teacher.distill(ledger, t, template, batch)

    assert {pid: draft for pid, (_, draft, _) in first.items()} == {
        it["pool_id"]: rewrite(template.render(text=it["text"])) for it in batch
    }
    assert len(fake_openai.requests) == 3
    assert all(h == f"Bearer {SECRET}" for h in fake_openai.auth_headers)
    assert fake_openai.requests[0]["messages"][0]["role"] == "system"

    again = teacher.distill(ledger, t, template, batch)  # same prompts: all from the ledger's cache
    assert again == first
    assert len(fake_openai.requests) == 3
    assert SECRET not in caplog.text
    assert SECRET not in repr(t)


def test_cache_key_changes_with_model_template_version_and_params(ledger):
    template = teacher.load_template("style_transfer")
    base = teacher.OpenAITeacher(model="a", api_key="k")
    keys = {
        teacher.prompt_key(base, template, "p", "s"),
        teacher.prompt_key(teacher.OpenAITeacher(model="b", api_key="k"), template, "p", "s"),
        teacher.prompt_key(teacher.OpenAITeacher(model="a", api_key="k", temperature=0.7), template, "p", "s"),
        teacher.prompt_key(base, teacher.Template(template.name, "2", template.system, template.body), "p", "s"),
        teacher.prompt_key(base, template, "p2", "s"),
    }
    assert len(keys) == 5
    # the key never depends on the api key
    assert teacher.prompt_key(teacher.OpenAITeacher(model="a", api_key="other"), template, "p", "s") in keys


def test_unreachable_api_fails_each_item_with_a_reason(ledger):
    t = teacher.OpenAITeacher(model="m", api_key=SECRET, base_url="http://127.0.0.1:9/v1", timeout=2)
    result = teacher.distill(ledger, t, teacher.load_template("style_transfer"), items("you idiot"))
    _, draft, error = result[1]
    assert draft is None and "Connection" in error and SECRET not in error
    assert ledger.cached_outputs([result[1][0]]) == {}  # a failure is never cached


def test_reference_teacher_replays_the_reference_and_reports_missing_ones(ledger):
    batch = items("you idiot", "shut up") + [{"pool_id": 9, "text": "no ref here", "reference": None}]
    result = teacher.distill(ledger, teacher.ReferenceTeacher(), teacher.load_template("style_transfer"), batch)
    assert result[1][1] == "ref 1" and result[2][1] == "ref 2"
    assert result[9][1] is None and result[9][2] == "no reference for this item"


def test_output_that_repeats_the_input_is_rejected(ledger):
    batch = [{"pool_id": 1, "text": "Same Text", "reference": "same text"}]
    result = teacher.distill(ledger, teacher.ReferenceTeacher(), teacher.load_template("style_transfer"), batch)
    assert result[1][1] is None and result[1][2] == "output repeats the input"
