"""The ML backend over real HTTP on 127.0.0.1: health, setup, predict from the ledger, webhook."""

from __future__ import annotations

import json
import sqlite3

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from loop.config import load_settings
from loop.ledger import Ledger
from loop.teacher import Draft
from ml_backend.app import create_app
from tests.support.webserve import serve


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(data_dir=str(tmp_path))
    ledger = Ledger(settings.ledger_path)
    ledger.add_pool([{"text": f"text {i}", "norm": f"text {i}", "reference": f"ref {i}"} for i in range(3)])
    rid = ledger.create_round(
        strategy="stratified", budget=2, learner_version="v0",
        items=[{"pool_id": 1, "cluster": 0, "score": 0.8}, {"pool_id": 2, "cluster": 1, "score": 0.4}],
    )
    ledger.set_drafts(rid, {1: Draft("k1", "draft one"), 2: Draft("k2", "draft two")})
    ledger.set_task_ids(rid, {1: 101, 2: 102})
    ledger.set_meta(f"round:{rid}:model_version", "reference|style_transfer@1")
    with serve(create_app(settings, ledger)) as url:
        yield url, ledger


def texts(results):
    return [r["result"][0]["value"]["text"][0] if r["result"] else None for r in results]


def test_health_and_setup_answer_the_learner_version(backend):
    url, ledger = backend
    assert requests.get(f"{url}/health", timeout=5).json()["status"] == "UP"
    setup = requests.post(f"{url}/setup", json={"project": "1.2026", "schema": "<View/>",
                                                "access_token": "secret-token"}, timeout=5)
    assert setup.status_code == 200 and setup.json() == {"model_version": "learner-v0"}
    ledger.add_model_version("v3", path="p", parent=None, round_id=None, pairs=1, metrics={})
    assert requests.post(f"{url}/setup", json={}, timeout=5).json() == {"model_version": "learner-v3"}


def test_predict_serves_stored_drafts_one_per_task_in_order(backend):
    url, _ = backend
    tasks = [{"id": 102, "data": {"text": "text 1"}}, {"id": 101, "data": {"text": "text 0"}},
             {"id": 999, "data": {"text": "unknown", "labelloop_key": "r1-p1"}}]
    reply = requests.post(f"{url}/predict", json={"tasks": tasks}, timeout=5).json()
    assert texts(reply["results"]) == ["draft two", "draft one", "draft one"]
    assert reply["results"][0]["score"] == pytest.approx(0.4)
    assert reply["results"][0]["model_version"] == "reference|style_transfer@1"
    assert reply["results"][0]["result"][0]["from_name"] == "response"


def test_predict_on_a_miss_asks_the_teacher_once(backend):
    url, ledger = backend
    task = {"id": 555, "data": {"text": "never seen", "reference": "a rewrite"}}
    reply = requests.post(f"{url}/predict", json={"tasks": [task, {"id": 556, "data": {}}]}, timeout=5).json()
    assert texts(reply["results"]) == ["a rewrite", None]
    assert len(reply["results"]) == 2


def test_a_live_miss_is_recorded_against_no_pool_item(backend):
    url, ledger = backend
    # misses at request positions 1 and 2: once booked against pool items 1 and 2, now against none
    tasks = [{"id": 101, "data": {}}, {"id": 700, "data": {"text": "brand new", "reference": "a new rewrite"}},
             {"id": 701, "data": {"text": "no reference here"}}]
    reply = requests.post(f"{url}/predict", json={"tasks": tasks}, timeout=5).json()
    assert texts(reply["results"]) == ["draft one", "a new rewrite", None]
    assert [(f["round_id"], f["pool_id"]) for f in ledger.teacher_failures()] == [(None, None)]
    assert ledger.teacher_usage()["calls"] == 2
    with sqlite3.connect(ledger.path) as conn:
        booked = conn.execute("SELECT round_id, pool_id FROM teacher_calls").fetchall()
    assert booked == [(None, None), (None, None)]


def test_the_teacher_is_made_once_per_app_on_the_first_miss(backend, monkeypatch):
    from loop import teacher as teacher_mod

    url, _ = backend
    made = []
    real = teacher_mod.from_settings
    monkeypatch.setattr(teacher_mod, "from_settings", lambda s, **kw: made.append(1) or real(s, **kw))
    hit = {"tasks": [{"id": 101, "data": {}}]}
    assert requests.post(f"{url}/predict", json=hit, timeout=5).ok and made == []
    for n in range(2):
        miss = {"tasks": [{"id": 800 + n, "data": {"text": f"new {n}", "reference": f"rewrite {n}"}}]}
        assert texts(requests.post(f"{url}/predict", json=miss, timeout=5).json()["results"]) == [f"rewrite {n}"]
    assert made == [1]


def test_webhook_records_the_event_and_answers_at_once(backend):
    url, ledger = backend
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "task": {"id": 101}, "annotation": {"id": 5}}
    assert requests.post(f"{url}/webhook", json=event, timeout=5).status_code == 201
    assert requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": 7}, timeout=5).ok
    assert ledger.pending_events() == 2


def test_webhook_ids_that_cannot_be_ours_are_recorded_as_none_not_a_500(backend):
    url, ledger = backend
    event = {"action": "ANNOTATION_CREATED", "task": {"id": 2**70}, "annotation": -3, "project": True}
    assert requests.post(f"{url}/webhook", json=event, timeout=5).status_code == 201
    assert ledger.pending_events() == 1 and ledger.pending_event_tasks()[1] == []


@pytest.mark.parametrize(
    "route, payload",
    [("/predict", b"not json"), ("/predict", b'{"tasks": "x"}'), ("/predict", b'{"tasks": [1]}'),
     ("/webhook", b"[1, 2]"), ("/setup", b"")],
)
def test_malformed_requests_get_a_json_400(backend, route, payload):
    url, _ = backend
    reply = requests.post(f"{url}{route}", data=payload, headers={"Content-Type": "application/json"}, timeout=5)
    assert reply.status_code == 400 and "error" in reply.json()


@pytest.fixture
def secured(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pa55-word")
    monkeypatch.setenv("LABELLOOP_WEBHOOK_SECRET", "hook-secret")
    settings = load_settings(data_dir=str(tmp_path))
    with serve(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize(
    "route, auth, status",
    [("/predict", None, 401), ("/predict", ("ls", "wrong"), 401), ("/predict", ("ls", "pa55-word"), 200),
     ("/setup", None, 401), ("/setup", ("ls", "pa55-word"), 200), ("/health", None, 200),
     ("/openapi.json", None, 200)],
)
def test_basic_auth_guards_every_route_but_health(secured, route, auth, status):
    method = requests.get if route in ("/health", "/openapi.json") else requests.post
    reply = method(f"{secured}{route}", json={"tasks": []}, auth=auth, timeout=5)
    assert reply.status_code == status
    assert "pa55-word" not in reply.text


@pytest.mark.parametrize("header, status", [(None, 403), ("wrong", 403), ("hook-secret", 201)])
def test_webhook_demands_the_shared_secret_when_configured(secured, header, status):
    headers = {"X-Labelloop-Secret": header} if header else {}
    reply = requests.post(f"{secured}/webhook", json={"action": "ANNOTATION_CREATED"}, headers=headers,
                          auth=("ls", "pa55-word"), timeout=5)
    assert reply.status_code == status and "hook-secret" not in reply.text


def test_openapi_describes_every_route(backend):
    url, _ = backend
    spec = requests.get(f"{url}/openapi.json", timeout=5).json()
    assert spec["openapi"].startswith("3.") and set(spec["paths"]) == {"/health", "/setup", "/predict", "/webhook"}


def test_oversized_body_is_a_json_413(backend):
    url, _ = backend
    reply = requests.post(f"{url}/predict", data=b"x" * (9 * 1024 * 1024),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 413 and "error" in reply.json()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
TASK = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(), st.text(max_size=5), st.none()),
    "data": st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "text": st.one_of(st.text(max_size=40), st.integers()), "labelloop_key": st.text(max_size=12),
        "reference": st.one_of(st.text(max_size=20), st.none())})),
})
BODIES = {
    "/predict": st.one_of(JSON, st.fixed_dictionaries({"tasks": st.one_of(JSON, st.lists(TASK, max_size=5))})),
    "/webhook": st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "action": JSON, "project": JSON, "task": JSON, "annotation": JSON})),
    "/setup": st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "project": JSON, "schema": JSON, "access_token": JSON, "extra_params": JSON})),
}
FUZZ_CASES = 150


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(data_dir=str(tmp_path_factory.mktemp("fuzz")))
    with serve(create_app(settings)) as url, requests.Session() as http:
        yield url, http
    mp.undo()


@pytest.mark.parametrize("route", sorted(BODIES))
def test_fuzzed_bodies_never_get_a_5xx(fuzz_target, route):
    url, http = fuzz_target
    seen = []

    @hsettings(max_examples=FUZZ_CASES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)
    @given(body=BODIES[route], raw=st.booleans(), junk=st.binary(max_size=64))
    def check(body, raw, junk):
        payload = junk if raw else json.dumps(body).encode()
        reply = http.post(f"{url}{route}", data=payload, headers={"Content-Type": "application/json"}, timeout=10)
        seen.append(reply.status_code)
        assert reply.status_code < 500, (route, payload[:200], reply.text[:200])
        assert reply.headers["Content-Type"].startswith("application/json")

    check()
    assert len(seen) == FUZZ_CASES and {400, 201 if route == "/webhook" else 200} <= set(seen)
