"""loop/studio.py against a real Label Studio (the session fixture in conftest.py); no mocks.

Checks that do not go through Studio talk to the REST API directly with requests, so that what
Studio writes is verified independently of how Studio reads it."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from loop.localstudio import LocalStudio
from loop.regions import with_subgroup
from loop.studio import Studio, StudioError, check_label_config, parse_verdict
from tests.support import task_items

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    name: (ROOT / "label_config" / f"{name}.xml").read_text() for name in ("style_transfer", "counter_narration")
}
HTTP_TIMEOUT = 30


# --------------------------------------------------------------------------------------------- helpers


def _title(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"



def _api(ls: LocalStudio, method: str, path: str, **kw) -> requests.Response:
    kw.setdefault("timeout", HTTP_TIMEOUT)
    headers = {"Authorization": f"Token {ls.token}", **kw.pop("headers", {})}
    resp = requests.request(method, f"{ls.url}{path}", headers=headers, **kw)
    assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
    return resp


def _tasks(ls: LocalStudio, project_id: int) -> list[dict]:
    out, page = [], 1
    while True:
        body = _api(
            ls, "GET", "/api/tasks/", params={"project": project_id, "fields": "all", "page": page, "page_size": 100}
        ).json()
        out.extend(body["tasks"])
        if len(out) >= body["total"] or not body["tasks"]:
            return out
        page += 1


@contextmanager
def socket_closed_port() -> Iterator[str]:
    """A loopback URL on which nothing listens: the port is bound (so nobody else takes it) but not
    listening, so connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def project(studio: Studio, request: pytest.FixtureRequest) -> int:
    return studio.ensure_project(_title(request.node.name[:40]), CONFIGS["counter_narration"])


# --------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("choice", "text", "draft", "expected"),
    [
        ("accept", "a reply", "a reply", "accept"),
        ("accept", "a better reply", "a reply", "edit"),  # changed text is an edit whatever was chosen
        ("edit", "a better reply", "a reply", "edit"),
        ("edit", "a reply", "a reply", "accept"),  # "edit" chosen but nothing changed
        ("reject", "a reply", "a reply", "reject"),
        ("reject", "a better reply", "a reply", "reject"),  # reject wins over an edit
        (None, "a reply", "a reply", "accept"),
        (None, "another", "a reply", "edit"),
        ("accept", "  a\n reply \t", "a reply", "accept"),  # whitespace-normalised
        ("accept", "A reply", "a reply", "edit"),  # case is a change
        ("accept", "", "a reply", "edit"),
    ],
)
def test_parse_verdict(choice: str | None, text: str, draft: str, expected: str) -> None:
    assert parse_verdict(choice, text, draft) == expected


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_label_config_accepted(studio: Studio, label_studio: LocalStudio, name: str) -> None:
    config = CONFIGS[name]
    check_label_config(config)  # LabelInterface parses it and a draft prediction validates
    pid = studio.ensure_project(_title(name), config)
    project = _api(label_studio, "GET", f"/api/projects/{pid}/").json()
    assert project["label_config"].strip() == config.strip()
    ids = studio.import_batch(pid, task_items(1), model_version="v-config")
    (task,) = _tasks(label_studio, pid)
    assert task["id"] == ids["item-0"]
    assert task["predictions"][0]["result"][0]["value"]["text"] == ["draft reply 0"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_config_that_shows_the_subgroup_is_accepted_with_tasks_that_carry_it(
        studio: Studio, label_studio: LocalStudio, name: str) -> None:
    config = with_subgroup(CONFIGS[name])
    check_label_config(config)
    pid = studio.ensure_project(_title(f"{name}-groups"), config)
    project = _api(label_studio, "GET", f"/api/projects/{pid}/").json()
    assert '<Text name="subgroup" value="$subgroup"/>' in project["label_config"]
    items = task_items(2)
    items[0]["meta"] |= {"subgroup": "women, migrants", "subgroups": ["women", "migrants"]}
    items[1]["meta"] |= {"subgroup": "", "subgroups": []}  # what labelloop sends for an item in no group
    studio.import_batch(pid, items, model_version="v-groups")
    data = sorted((t["data"] for t in _tasks(label_studio, pid)), key=lambda d: d["labelloop_key"])
    assert [(d["subgroup"], d["subgroups"]) for d in data] == [("women, migrants", ["women", "migrants"]), ("", [])]


@pytest.mark.parametrize(
    "config",
    [
        '<View><Text name="source" value="$text"/></View>',
        '<View><Text name="source" value="$text"/><TextArea name="response" toName="source"/></View>',
        '<View><Text name="source" value="$text"/><TextArea name="response" toName="source"/>'
        '<Choices name="verdict" toName="source"><Choice value="accept"/><Choice value="reject"/></Choices></View>',
        "<View><Text name='src' value='$text'/></View",
    ],
)
def test_check_label_config_rejects(config: str) -> None:
    with pytest.raises(ValueError):
        check_label_config(config)


# --------------------------------------------------------------------------------------------- projects


def test_ensure_project_idempotent(studio: Studio) -> None:
    title = _title("idem")
    pid = studio.ensure_project(title, CONFIGS["style_transfer"])
    assert studio.ensure_project(title, CONFIGS["style_transfer"]) == pid
    assert studio.ensure_project(title, CONFIGS["style_transfer"], project_id=pid) == pid
    # a stale id falls back to the title
    assert studio.ensure_project(title, CONFIGS["style_transfer"], project_id=10**8) == pid
    # a title that only contains ours is another project
    other = studio.ensure_project(title + "-b", CONFIGS["style_transfer"])
    assert other != pid
    assert studio.ensure_project(title, CONFIGS["style_transfer"]) == pid


# --------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("n", [1, 7])
def test_import_batch_with_predictions(studio: Studio, label_studio: LocalStudio, project: int, n: int) -> None:
    items = task_items(n)
    ids = studio.import_batch(project, items, model_version="teacher-v1")
    assert sorted(ids) == sorted(i["key"] for i in items)
    assert len(set(ids.values())) == n

    tasks = {t["id"]: t for t in _tasks(label_studio, project)}
    assert len(tasks) == n
    for item in items:
        task = tasks[ids[item["key"]]]
        assert task["data"] == {
            "text": item["text"],
            "draft": item["draft"],
            "labelloop_key": item["key"],
            **item["meta"],
        }
        (pred,) = task["predictions"]
        assert pred["model_version"] == "teacher-v1"
        assert pred["score"] == pytest.approx(item["score"])
        assert pred["result"] == [
            {"from_name": "response", "to_name": "source", "type": "textarea", "value": {"text": [item["draft"]]}}
        ]
    counts = studio.counts(project)
    assert counts["task_number"] == n
    assert counts["total_predictions_number"] == n
    assert studio.existing_keys(project) == ids


def test_import_batch_is_idempotent(studio: Studio, project: int) -> None:
    first = studio.import_batch(project, task_items(4), model_version="v1")
    assert studio.counts(project)["task_number"] == 4

    again = task_items(4) + task_items(3, start=4)
    second = studio.import_batch(project, again, model_version="v1")
    assert studio.counts(project)["task_number"] == 7  # only the 3 new ones
    assert studio.counts(project)["total_predictions_number"] == 7
    assert {k: second[k] for k in first} == first  # old keys keep their tasks
    assert sorted(second) == sorted(i["key"] for i in again)

    # the same batch once more, and a batch with a key twice: nothing new / one task
    assert studio.import_batch(project, again, model_version="v1") == second
    dup = task_items(1, start=20)
    ids = studio.import_batch(project, dup + dup, model_version="v1")
    assert list(ids) == ["item-20"]
    assert studio.counts(project)["task_number"] == 8
    assert studio.import_batch(project, [], model_version="v1") == {}


def test_a_later_batch_reads_only_the_tasks_of_its_keys_and_still_finds_those_imported_already(
    studio: Studio, label_studio: LocalStudio, project: int
) -> None:
    """Round 2's import does not read round 1's tasks (Label Studio filters by the keys' common prefix),
    yet the task of one of its own keys, committed by a first attempt whose answer was lost, is found and
    kept: not imported twice."""
    studio.import_batch(project, task_items(4, prefix="r1-p"), model_version="v1")
    later = task_items(3, prefix="r2-p")
    _api(label_studio, "POST", f"/api/projects/{project}/import",
         json=[Studio._task_payload(later[0], "v1", where="test")])  # the copy of a committed first attempt
    assert set(studio._key_copies(project, {i["key"] for i in later})) == {"r2-p-0"}
    ids = studio.import_batch(project, later, model_version="v1")
    assert sorted(ids) == ["r2-p-0", "r2-p-1", "r2-p-2"]
    counts = studio.counts(project)
    assert (counts["task_number"], counts["total_predictions_number"]) == (7, 7)


def test_import_batch_rejects_badtask_items(studio: Studio, project: int) -> None:
    bad_meta = task_items(1)
    bad_meta[0]["meta"] = {"draft": "clash"}
    with pytest.raises(ValueError, match="reserved"):
        studio.import_batch(project, bad_meta, model_version="v1")
    bad_score = task_items(1)
    bad_score[0]["score"] = float("nan")
    with pytest.raises(ValueError, match="score"):
        studio.import_batch(project, bad_score, model_version="v1")
    assert studio.counts(project)["task_number"] == 0


def test_dropped_predictions_are_reattached(studio: Studio, label_studio: LocalStudio, project: int) -> None:
    """The server retries an import that met a SQLite lock without its predictions: here the tasks are
    imported bare (what such a retry leaves) and the recovery path re-attaches the drafts in one call."""
    items = task_items(5)
    payloads = [Studio._task_payload(item, "v-lost", where="test") for item in items]
    resp = _api(
        label_studio,
        "POST",
        f"/api/projects/{project}/import",
        params={"return_task_ids": "true"},
        json=[{"data": p["data"]} for p in payloads[:3]] + payloads[3:],
    ).json()
    assert resp["prediction_count"] == 2
    studio._reattach_predictions(project, payloads, resp["task_ids"])
    tasks = _tasks(label_studio, project)
    assert all(len(t["predictions"]) == 1 for t in tasks)  # missing ones added, none doubled
    assert {t["predictions"][0]["result"][0]["value"]["text"][0] for t in tasks} == {i["draft"] for i in items}


# --------------------------------------------------------------------------------------------- annotations


@pytest.mark.parametrize(
    ("verdict", "edit", "comment", "expected"),
    [
        ("accept", False, None, "accept"),
        ("edit", True, "softer wording", "edit"),
        ("reject", False, "still offensive", "reject"),
        ("accept", True, None, "edit"),  # accepted but changed: an edit
    ],
)
def test_annotate_and_read_back(
    studio: Studio,
    label_studio: LocalStudio,
    project: int,
    verdict: str,
    edit: bool,
    comment: str | None,
    expected: str,
) -> None:
    items = task_items(3)
    ids = studio.import_batch(project, items, model_version="v1")
    assert studio.completed_annotations(project) == []

    draft = items[1]["draft"]
    text = draft + " (revised)" if edit else draft
    ann_id = studio.annotate(ids["item-1"], verdict=verdict, text=text, comment=comment)

    (ann,) = studio.completed_annotations(project)
    assert ann.annotation_id == ann_id
    assert ann.task_id == ids["item-1"]
    assert ann.key == "item-1"
    assert ann.verdict == expected
    assert ann.text == text
    assert ann.draft == draft
    assert ann.comment == comment
    assert ann.annotator == label_studio.username
    assert ann.updated_at.startswith("20")

    # the annotation started from the task's prediction, as in the UI
    stored = _api(label_studio, "GET", f"/api/annotations/{ann_id}/").json()
    task = _api(label_studio, "GET", f"/api/tasks/{ids['item-1']}/").json()
    assert stored["parent_prediction"] == task["predictions"][0]["id"]
    counts = studio.counts(project)
    assert counts["num_tasks_with_annotations"] == 1
    assert counts["total_annotations_number"] == 1


def test_completed_annotations_filters(studio: Studio, label_studio: LocalStudio, project: int) -> None:
    ids = studio.import_batch(project, task_items(3), model_version="v1")
    kept = [
        studio.annotate(ids["item-0"], verdict="accept", text="draft reply 0"),
        studio.annotate(ids["item-0"], verdict="reject", text="draft reply 0"),  # a second annotator
    ]
    # a skipped task (cancelled annotation) is not a verification
    _api(
        label_studio,
        "POST",
        f"/api/tasks/{ids['item-1']}/annotations/",
        json={"result": [], "was_cancelled": True},
    )
    # a task that labelloop did not import (no labelloop_key) is ignored
    foreign = _api(
        label_studio,
        "POST",
        f"/api/projects/{project}/import",
        params={"return_task_ids": "true"},
        json=[{"data": {"text": "foreign", "draft": "x"}}],
    ).json()["task_ids"][0]
    _api(
        label_studio,
        "POST",
        f"/api/tasks/{foreign}/annotations/",
        json={
            "result": [
                {"from_name": "verdict", "to_name": "source", "type": "choices", "value": {"choices": ["accept"]}}
            ]
        },
    )
    # an accept without a response region is invalid (the annotator may never have seen the draft): left out;
    # a reject needs no response and keeps the draft as its text
    def verdict_only(task_id: int, verdict: str) -> int:
        region = {"from_name": "verdict", "to_name": "source", "type": "choices", "value": {"choices": [verdict]}}
        return _api(label_studio, "POST", f"/api/tasks/{task_id}/annotations/", json={"result": [region]}).json()["id"]

    invalid = verdict_only(ids["item-2"], "accept")
    bare_reject = verdict_only(ids["item-2"], "reject")

    anns = studio.completed_annotations(project)
    assert [a.annotation_id for a in anns] == sorted([*kept, bare_reject])
    assert [a.verdict for a in anns] == ["accept", "reject", "reject"]
    assert anns[2].text == anns[2].draft == "draft reply 2"
    assert invalid not in {r["annotation"].annotation_id for r in studio.export_annotations(project)}
    assert studio.gone_annotations([invalid, bare_reject, kept[0], 10**8]) == {invalid, 10**8}
    assert studio.counts(project)["skipped_annotations_number"] == 1


def test_annotate_rejects_unknown_verdict(studio: Studio, project: int) -> None:
    ids = studio.import_batch(project, task_items(1), model_version="v1")
    with pytest.raises(ValueError):
        studio.annotate(ids["item-0"], verdict="maybe", text="x")


# --------------------------------------------------------------------------------------------- backend, webhook


class _Backend(BaseHTTPRequestHandler):
    """The least an ML backend must answer for Label Studio to connect it."""

    def _json(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._json({"status": "UP", "model_class": "Test"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/setup"):
            self._json({"model_version": "test"})
        elif self.path.startswith("/predict"):
            self._json({"results": []})
        else:
            self._json({})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def backend_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_connect_backend_idempotent(studio: Studio, label_studio: LocalStudio, project: int, backend_url: str) -> None:
    bid = studio.connect_backend(project, backend_url)
    assert studio.connect_backend(project, backend_url) == bid
    assert studio.connect_backend(project, backend_url + "/") == bid
    backends = _api(label_studio, "GET", "/api/ml/", params={"project": project}).json()
    assert [b["id"] for b in backends] == [bid]


def test_connect_backend_not_running(studio: Studio, project: int) -> None:
    with socket_closed_port() as url:
        with pytest.raises(StudioError) as err:
            studio.connect_backend(project, url)
    assert err.value.status == 400


def test_ensure_webhook_idempotent(studio: Studio, label_studio: LocalStudio, project: int) -> None:
    url = "http://127.0.0.1:9/labelloop/webhook"
    hid = studio.ensure_webhook(project, url, headers={"X-Labelloop-Secret": "s1"})
    assert studio.ensure_webhook(project, url, headers={"X-Labelloop-Secret": "s1"}) == hid
    # changed headers update the same webhook
    assert studio.ensure_webhook(project, url, headers={"X-Labelloop-Secret": "s2"}) == hid
    hooks = _api(label_studio, "GET", "/api/webhooks/", params={"project": project}).json()
    (hook,) = [h for h in hooks if h["url"] == url]
    assert hook["id"] == hid
    assert sorted(hook["actions"]) == ["ANNOTATIONS_DELETED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
    assert hook["send_payload"] is True
    assert hook["headers"] == {"X-Labelloop-Secret": "s2"}
    # another url is another webhook
    assert studio.ensure_webhook(project, url + "2") != hid


# --------------------------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def personal_access_token(label_studio: LocalStudio) -> str:
    """A personal access token (a JWT refresh token, the default kind in Label Studio 1.23)."""
    return _api(label_studio, "POST", "/api/token/").json()["token"]


def test_personal_access_token(label_studio: LocalStudio, personal_access_token: str) -> None:
    assert personal_access_token.count(".") == 2  # a JWT, not a legacy token
    studio = Studio(label_studio.url, personal_access_token)
    pid = studio.ensure_project(_title("pat"), CONFIGS["style_transfer"])
    ids = studio.import_batch(pid, task_items(2), model_version="v-pat")
    ann_id = studio.annotate(ids["item-0"], verdict="accept", text="draft reply 0")
    assert [a.annotation_id for a in studio.completed_annotations(pid)] == [ann_id]


# --------------------------------------------------------------------------------------------- errors


def test_errors_carry_status_not_the_key(label_studio: LocalStudio) -> None:
    bad_key = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(StudioError) as err:
        Studio(label_studio.url, bad_key).counts(1)
    assert err.value.status == 401
    assert bad_key not in str(err.value)

    with pytest.raises(StudioError) as err:
        Studio(label_studio.url, label_studio.token).counts(10**8)
    assert err.value.status == 404
    assert "project" in str(err.value)
    assert label_studio.token not in str(err.value)

    with socket_closed_port() as url:
        with pytest.raises(StudioError) as err:
            Studio(url, label_studio.token).counts(1)
    assert err.value.status is None
    assert label_studio.token not in str(err.value)
