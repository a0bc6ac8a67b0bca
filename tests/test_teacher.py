"""The teacher: templates, the real openai client against a local server, the cache, the reference teacher."""

from __future__ import annotations

import logging

import pytest

from loop import teacher
from loop.ledger import Ledger
from tests.support.openai_server import FakeOpenAI, rewrite

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

    assert {pid: d.text for pid, d in first.items()} == {
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
    t = teacher.OpenAITeacher(model="m", api_key=SECRET, base_url="http://127.0.0.1:9/v1", timeout=2,
                              max_attempts=3, backoff=0.01)
    result = teacher.distill(ledger, t, teacher.load_template("style_transfer"), items("you idiot"))
    draft, error = result[1].text, result[1].error
    assert draft is None and "connection error" in error and "after 3 attempts" in error and SECRET not in error
    assert ledger.cached_outputs([result[1].key]) == {}  # a failure is never cached
    assert ledger.teacher_usage() | {"cost": 0} == {"calls": 1, "attempts": 3, "failures": 1, "cached": 0,
                                                    "prompt_tokens": 0, "completion_tokens": 0, "cost": 0}


def test_reference_teacher_replays_the_reference_and_reports_missing_ones(ledger):
    batch = items("you idiot", "shut up") + [{"pool_id": 9, "text": "no ref here", "reference": None}]
    result = teacher.distill(ledger, teacher.ReferenceTeacher(), teacher.load_template("style_transfer"), batch)
    assert result[1].text == "ref 1" and result[2].text == "ref 2"
    assert result[9].text is None and result[9].error == "no reference for this item"


def test_output_that_repeats_the_input_is_rejected(ledger):
    batch = [{"pool_id": 1, "text": "Same Text", "reference": "same text"}]
    result = teacher.distill(ledger, teacher.ReferenceTeacher(), teacher.load_template("style_transfer"), batch)
    assert result[1].text is None and result[1].error == "output repeats the input"


# --- production path: faults, limits, checks, accounting -------------------------------------------------
def fast(server: FakeOpenAI, **kw) -> teacher.OpenAITeacher:
    """A teacher against the local server with short waits, so that fault tests stay fast."""
    options = {"model": "gpt-test", "api_key": SECRET, "base_url": server.base_url, "backoff": 0.01,
               "timeout": 0.5, "max_attempts": 3, "concurrency": 4} | kw
    return teacher.OpenAITeacher(**options)


TRANSIENT = ["429", "500", "slow", "malformed", "disconnect", "refusal", "empty", "echo"]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_one_fault_is_retried_and_the_item_distilled(ledger, fault):
    template = teacher.load_template("style_transfer")
    batch = items("You are a moron", "what a stupid idea", "shut up already")
    with FakeOpenAI(script={"moron": [fault]}, retry_after=0.05, slow_s=1.5) as server:
        result = teacher.distill(ledger, fast(server), template, batch, round_id=1)
    assert {pid: r.text for pid, r in result.items()} == {
        it["pool_id"]: rewrite(template.render(text=it["text"])) for it in batch
    }
    assert server.fault_counts == {fault: 1} and len(server.requests) == 4
    usage = ledger.teacher_usage(1)
    assert (usage["calls"], usage["attempts"], usage["failures"]) == (3, 4, 0)
    assert ledger.teacher_usage_by_item(1)[1]["attempts"] == 2


@pytest.mark.parametrize(
    "fault, reason, attempts",
    [("429", "429 rate limited", 3), ("500", "500 server error", 3), ("slow", "timeout after 0.5 s", 3),
     ("malformed", "malformed response", 3), ("refusal", "refusal", 2), ("empty", "empty output", 2),
     ("echo", "output repeats the input", 2), ("401", "401 AuthenticationError", 1)],
)
def test_a_persistent_fault_fails_only_that_item_with_its_reason(ledger, fault, reason, attempts):
    batch = items("You are a moron", "what a stupid idea", "shut up already")
    with FakeOpenAI(script={"moron": [fault] * 5}, retry_after=0.05, slow_s=1.5) as server:
        result = teacher.distill(ledger, fast(server), teacher.load_template("style_transfer"), batch, round_id=1)
    key, draft, error = result[1].key, result[1].text, result[1].error
    assert draft is None and reason in error
    assert result[2].text and result[3].text  # the rest of the batch is unharmed
    assert server.fault_counts[fault] == attempts  # bounded: at most max_attempts, checks retried once
    assert ledger.cached_outputs([key]) == {}
    assert ledger.teacher_failures(1) == [{"round_id": 1, "pool_id": 1, "attempt": attempts, "reason": error}]


def test_random_faults_every_item_ends_distilled_or_failed_and_a_rerun_asks_only_the_failed(ledger):
    template = teacher.load_template("style_transfer")
    batch = items(*(f"text number {i} you idiot" for i in range(40)))
    with FakeOpenAI(fault_rate=0.3, retry_after=0.05, slow_s=1.0, seed=3) as server:
        t = fast(server, timeout=0.3, max_attempts=4, concurrency=8)
        first = teacher.distill(ledger, t, template, batch, round_id=1)
        assert set(first) == {it["pool_id"] for it in batch}
        for it in batch:
            draft, error = first[it["pool_id"]].text, first[it["pool_id"]].error
            assert (draft == rewrite(template.render(text=it["text"])) and error is None) or (draft is None and error)
        distilled = [pid for pid, r in first.items() if r.text]
        assert len(distilled) >= 30
        assert ledger.teacher_usage(1)["attempts"] == len(server.requests) > 40
        served = len(server.requests)
        server.fault_rate = 0.0
        again = teacher.distill(ledger, t, template, batch, round_id=2)
    assert len(server.requests) - served == 40 - len(distilled)  # cached items cost no call
    assert all(r.text for r in again.values())
    assert ledger.teacher_usage(2)["cached"] == len(distilled)


def test_retry_after_is_honoured(ledger):
    with FakeOpenAI(script={"moron": ["429"]}, retry_after=0.6) as server:
        teacher.distill(ledger, fast(server), teacher.load_template("style_transfer"), items("You are a moron"))
    first, second = (e["t"] for e in server.log)
    assert second - first >= 0.6


def test_requests_per_period_never_exceed_the_limit(ledger):
    with FakeOpenAI() as server:
        t = fast(server, rpm=4, rate_period=0.5, concurrency=8)
        result = teacher.distill(ledger, t, teacher.load_template("style_transfer"),
                                 items(*(f"item {i} idiot" for i in range(12))))
    assert all(r.text for r in result.values())
    arrivals = sorted(e["t"] for e in server.log)
    assert max(sum(1 for u in arrivals if t0 <= u < t0 + 0.5) for t0 in arrivals) == 4


def test_tokens_per_period_never_exceed_the_limit(ledger):
    template = teacher.load_template("style_transfer")
    batch = items(*(f"item {i} idiot" for i in range(10)))
    messages = template.messages(template.render(text=batch[0]["text"]))
    reserve = sum(len(m["content"].encode()) + 8 for m in messages) + 200
    with FakeOpenAI() as server:
        t = fast(server, tpm=2 * reserve + 20, rate_period=0.4, concurrency=8)
        result = teacher.distill(ledger, t, template, batch)
    assert all(r.text for r in result.values())
    log = sorted((e["t"], e["tokens"]) for e in server.log)
    assert max(sum(k for u, k in log if t0 <= u < t0 + 0.4) for t0, _ in log) <= 2 * reserve + 20


def test_rate_limiter_holds_a_settled_slot_for_one_period():
    limiter = teacher.RateLimiter(rpm=10, tpm=100, period=0.3)
    slot = limiter.acquire(60)
    limiter.settle(slot, 60)
    settled = slot[0]
    limiter.acquire(50)  # 60 + 50 > 100: waits until the first slot leaves the window
    assert slot[0] is not None and __import__("time").monotonic() - settled >= 0.3
    with pytest.raises(ValueError, match="more than teacher.tpm=100"):
        limiter.acquire(101)


def test_a_prompt_over_the_token_limit_fails_without_a_call(ledger):
    with FakeOpenAI() as server:
        result = teacher.distill(ledger, fast(server, tpm=50), teacher.load_template("style_transfer"),
                                 items("you idiot"))
    assert result[1].text is None and "more than teacher.tpm=50" in result[1].error
    assert server.requests == []


def test_tokens_and_cost_are_accounted_per_item_round_and_total(ledger):
    template = teacher.load_template("style_transfer")
    batch = items("You are a moron", "what a stupid idea")
    with FakeOpenAI(script={"moron": ["refusal"]}) as server:
        t = fast(server, prices={"gpt-te": (9.0, 9.0), "gpt-test": (1.0, 2.0)})  # longest prefix wins
        teacher.distill(ledger, t, template, batch, round_id=7)
    prompt = sum(len(m["content"].split()) for r in server.requests for m in r["messages"])
    total = sum(e["tokens"] for e in server.log)
    usage = ledger.teacher_usage(7)
    assert (usage["prompt_tokens"], usage["prompt_tokens"] + usage["completion_tokens"]) == (prompt, total)
    assert usage["cost"] == pytest.approx((prompt * 1.0 + (total - prompt) * 2.0) / 1e6)
    assert ledger.teacher_usage() == usage and ledger.teacher_usage(8)["attempts"] == 0
    per_item = ledger.teacher_usage_by_item(7)
    assert per_item[1]["attempts"] == 2 and per_item[2]["attempts"] == 1  # the refused answer is billed too
    assert sum(i["prompt_tokens"] for i in per_item.values()) == prompt


def test_secrets_never_reach_logs_errors_or_the_ledger(ledger, caplog):
    caplog.set_level(logging.DEBUG)
    batch = items("You are a moron", "what a stupid idea", "shut up already")
    with FakeOpenAI(script={"moron": ["401"], "stupid": ["500", "disconnect", "500"]}) as server:
        result = teacher.distill(ledger, fast(server), teacher.load_template("style_transfer"), batch, round_id=1)
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)  # the key was really sent
    assert result[1].error == "401 AuthenticationError" and result[2].text is None
    ledger.close()
    stored = b"".join(p.read_bytes() for p in ledger.path.parent.glob("ledger.sqlite*"))
    assert SECRET.encode() not in stored
    assert SECRET not in caplog.text and "Bearer" not in caplog.text


def test_few_shot_examples_become_chat_turns(ledger):
    template = teacher.load_template("style_transfer")
    assert len(template.examples) == 2
    with FakeOpenAI() as server:
        teacher.distill(ledger, fast(server), template, items("you idiot"))
    roles = [m["role"] for m in server.requests[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert server.requests[0]["messages"][2]["content"] == template.examples[0][1]


def test_an_example_missing_a_field_names_its_line(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("name: mine\nversion: 3\n---\nFix: {text}\n--- example\ntext: a\noutput: b\n"
                    "--- example\noutput: only an answer\n")
    with pytest.raises(teacher.TemplateError, match=r"mine.txt:8: example 2: field\(s\) text missing"):
        teacher.load_template("style_transfer", path)


@pytest.mark.parametrize(
    "text, reason",
    [("", "empty output"), ("ok", None), ("x" * 50, "longer than 40"), ("You Are A MORON!", "repeats the input"),
     ("I'm sorry, but I can't help with that.", "refusal"), ("As an AI, I cannot do this.", "refusal"),
     ("I can't assist with rewriting this.", "refusal"), ("Sorry to hear that you feel so.", None),
     ("I won the argument, fair and square.", None)],
)
def test_output_checks(text, reason):
    got = teacher.check_output(text, "you are a moron", min_chars=2, max_chars=40)
    assert (got is None) if reason is None else (reason in got)


# --- distill_round: failed items are reported, never imported, and topped up from the same cluster ------
# Scores are stored under (learner version, R's signature), `<version>@int8` for ct2-int8: top-ups must
# read them there for every R, not only the default one.
SCORE_KEYS = [
    ({}, ("v0", "profanity")),
    ({"learner__runtime": "ct2-int8"}, ("v0@int8", "profanity")),
    ({"scorer__attributes": [{"kind": "profanity", "weight": 2.0}]}, ("v0", "weighted[rank](profanity*2)")),
    ({"scorer__kind": "hf-classifier", "scorer__model": "my/toxic-model", "scorer__label": "toxic"},
     ("v0", "hf-classifier:my/toxic-model#toxic")),
]


@pytest.mark.parametrize(("overrides", "key"), SCORE_KEYS, ids=["profanity", "ct2-int8", "weighted", "hf-classifier"])
def test_distill_round_tops_up_failed_items_from_the_same_cluster(tmp_path, ledger, overrides, key):
    from loop import rounds
    from loop.config import load_settings

    # cluster 0: 1 (no reference: fails), 2 ok | unsent: 5 (no reference, best score: fails too), 6 ok, 7 ok
    # cluster 1: 3 ok, 4 ok                     | unsent: 8 ok (must not be used: cluster 1 needs nothing)
    spec = {1: (0, None, 0.9), 2: (0, "r2", 0.8), 3: (1, "r3", 0.9), 4: (1, "r4", 0.8),
            5: (0, None, 0.7), 6: (0, "r6", 0.6), 7: (0, "r7", 0.5), 8: (1, "r8", 0.9)}
    ledger.add_pool([{"text": f"text {i}", "norm": f"text {i}", "reference": ref} for i, (_, ref, _) in spec.items()])
    ids = sorted(spec)
    ledger.put_clusters("test", ids, [spec[i][0] for i in ids])
    ledger.put_scores(*key, ids, [f"interim {i}" for i in ids], [spec[i][2] for i in ids])
    rid = ledger.create_round(strategy="stratified", budget=4, learner_version="v0", items=[
        {"pool_id": i, "cluster": spec[i][0], "score": spec[i][2], "interim": f"interim {i}"} for i in (1, 2, 3, 4)])
    settings = load_settings(data_dir=str(tmp_path), teacher__kind="reference", learner__instruction=False,
                             **overrides)
    ctx = rounds.Context(settings, ledger)
    assert rounds.score_key(settings, "v0") == key

    result = rounds.distill_round(ctx, rid)

    assert result["distilled"] == 4 and result["failed"] == 2 and result["topped_up"] == 2
    assert ledger.topups(rid) == {5: 1, 6: 5}  # 5 replaced 1 and failed; 6 replaced 5
    batch = {b["pool_id"]: b for b in ledger.batch(rid)}
    assert set(batch) == {1, 2, 3, 4, 5, 6}
    assert sorted(p for p, b in batch.items() if b["draft"]) == [2, 3, 4, 6]  # what import_round imports
    assert batch[1]["teacher_error"] == batch[5]["teacher_error"] == "no reference for this item"
    assert [f["pool_id"] for f in ledger.teacher_failures(rid)] == [1, 5]

    again = rounds.distill_round(ctx, rid)  # resuming after a crash changes nothing
    assert again == result and len(ledger.batch(rid)) == 6


def test_settings_reach_the_teacher_and_prices_come_from_the_environment(monkeypatch):
    from loop.config import load_settings

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("LABELLOOP_TEACHER__PRICES", '{"my-model": [1.5, 3.0]}')
    settings = load_settings(teacher__model="my-model-2025", teacher__rpm=60, teacher__tpm=9000,
                             teacher__max_attempts=2, teacher__max_chars=300)
    t = teacher.from_settings(settings)
    assert (t.rpm, t.tpm, t.max_attempts, t.max_chars) == (60, 9000, 2, 300)
    assert t.cost(1_000_000, 1_000_000) == pytest.approx(4.5)  # priced by the prefix "my-model"
    assert teacher.OpenAITeacher(model="unknown", api_key="k").cost(10**6, 10**6) == 0.0
    assert SECRET not in repr(t)


REFUSALS = {
    "I'm sorry, but we should aim for tolerance and respect.": None,  # how counter-narratives open
    "I'm sorry you feel that way; most immigrants work and pay taxes.": None,
    "Sorry, but that's not true: studies show otherwise.": None,
    "I can't believe people still say this; it is false.": None,
    "I'm sorry, but I can't help with that.": "refusal",
    "Sorry, I can't assist with that.": "refusal",
    "I cannot help with this request.": "refusal",
    "I am unable to rewrite this text.": "refusal",
    "Apologies, but I cannot comply.": "refusal",
    "As an AI, I will not write this.": "refusal",
    "I must decline.": "refusal",
}


@pytest.mark.parametrize(("output", "verdict"), REFUSALS.items(), ids=range(len(REFUSALS)))
def test_an_apology_is_not_a_refusal_but_a_refusal_is(output, verdict):
    reason = teacher.check_output(output, "immigrants are criminals")
    assert (reason or "").split(":")[0] == (verdict or "")


def test_a_replayed_human_reference_is_never_judged_a_refusal(ledger):
    batch = [{"pool_id": 1, "text": "they are all lazy", "reference": "I'm sorry, but I can't agree: most work hard."}]
    result = teacher.distill(ledger, teacher.ReferenceTeacher(), teacher.load_template("counter_narration"), batch)
    assert result[1].error is None and result[1].text.startswith("I'm sorry, but I can't agree")


# --- the learner's instruction: in the task's template, versioned with it ----------------------------------
@pytest.mark.parametrize("task", ["style_transfer", "counter_narration"])
def test_each_bundled_template_gives_the_learner_its_own_instruction(task):
    template = teacher.load_template(task)
    assert "{text}" in template.instruction and int(template.version) >= 3
    other = teacher.load_template("counter_narration" if task == "style_transfer" else "style_transfer")
    assert template.instruction != other.instruction  # the learner can tell the two tasks apart


def test_an_instruction_without_a_place_for_the_text_is_refused(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("name: mine\nversion: 1\ninstruction: Be polite.\n---\nFix: {text}\n")
    with pytest.raises(teacher.TemplateError, match=r"mine.txt: header field 'instruction' needs \{text\}"):
        teacher.load_template("style_transfer", path)
