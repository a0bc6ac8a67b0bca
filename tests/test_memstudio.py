"""tests/support/memstudio.py: the in-memory Label Studio keeps the interface and the answers of the
real one (one contract, run against both), and its fault injection does what crash tests need."""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from loop.localstudio import LocalStudio
from loop.studio import FROM_RESPONSE, FROM_VERDICT, KEY_FIELD, Studio, StudioError
from tests.support import task_items
from tests.support.memstudio import MemStudio

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / "label_config" / "counter_narration.xml").read_text()
HTTP_TIMEOUT = 30
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")



# --------------------------------------------------------------------------------------------- interface


def _public_methods(cls: type) -> dict[str, Any]:
    return {name: member for name, member in inspect.getmembers(cls, callable) if not name.startswith("_")}


def test_memstudio_has_every_public_method_of_studio_with_the_same_signature() -> None:
    studio, mem = _public_methods(Studio), _public_methods(MemStudio)
    assert studio, "Studio has no public methods: the comparison would be empty"
    missing = sorted(set(studio) - set(mem))
    assert not missing, f"MemStudio lacks {missing}: add them to tests/support/memstudio.py"
    for name, method in studio.items():
        want, got = inspect.signature(method), inspect.signature(mem[name])
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == [
            (p.name, p.kind, p.default) for p in want.parameters.values()
        ], name
        assert got == want, f"{name}: {got} != {want}"  # annotations and return type too


# --------------------------------------------------------------------------------------------- contract


class UI(Protocol):
    """What a person does in Label Studio's UI, which Studio itself never does."""

    def skip(self, task_id: int) -> int: ...
    def update_annotation(self, annotation_id: int, *, verdict: str | None = None, text: str | None = None) -> None: ...
    def delete_annotation(self, annotation_id: int) -> None: ...
    def delete_task(self, task_id: int) -> None: ...
    def import_raw(self, project_id: int, tasks: list[dict]) -> list[int]: ...


class RealUI:
    """The same UI actions against a real server, through its REST API (not through Studio)."""

    def __init__(self, ls: LocalStudio):
        self.ls = ls

    def _api(self, method: str, path: str, **kw: Any) -> requests.Response:
        resp = requests.request(
            method, f"{self.ls.url}{path}", headers={"Authorization": f"Token {self.ls.token}"},
            timeout=HTTP_TIMEOUT, **kw,
        )
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        return resp

    def skip(self, task_id: int) -> int:
        body = {"result": [], "was_cancelled": True}
        return int(self._api("POST", f"/api/tasks/{task_id}/annotations/", json=body).json()["id"])

    def update_annotation(self, annotation_id: int, *, verdict: str | None = None, text: str | None = None) -> None:
        result = self._api("GET", f"/api/annotations/{annotation_id}/").json()["result"]
        for region in result:
            if region["from_name"] == FROM_RESPONSE and text is not None:
                region["value"] = {"text": [text]}
            if region["from_name"] == FROM_VERDICT and verdict is not None:
                region["value"] = {"choices": [verdict]}
        self._api("PATCH", f"/api/annotations/{annotation_id}/", json={"result": result, "was_cancelled": False})

    def delete_annotation(self, annotation_id: int) -> None:
        self._api("DELETE", f"/api/annotations/{annotation_id}/")

    def delete_task(self, task_id: int) -> None:
        self._api("DELETE", f"/api/tasks/{task_id}/")

    def import_raw(self, project_id: int, tasks: list[dict]) -> list[int]:
        reply = self._api("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks)
        return [int(t) for t in reply.json()["task_ids"]]


@dataclass
class Server:
    studio: Any  # Studio or MemStudio: the contract is that the tests cannot tell
    ui: UI
    username: str


@pytest.fixture(params=["real", "mem"])
def server(request: pytest.FixtureRequest) -> Server:
    """The real Label Studio of the session (started on first use) or a fresh MemStudio."""
    if request.param == "real":
        ls: LocalStudio = request.getfixturevalue("label_studio")
        return Server(request.getfixturevalue("studio"), RealUI(ls), ls.username)
    mem = MemStudio()
    return Server(mem, mem, mem.username)


def _shape(annotations: list) -> list[tuple]:
    return [(a.key, a.verdict, a.text, a.draft, a.comment, a.annotator, a.lead_time) for a in annotations]


def test_contract_import_annotate_read_back(server: Server) -> None:
    studio = server.studio
    pid = studio.ensure_project(f"contract-{uuid.uuid4().hex[:8]}", CONFIG)
    assert studio.ensure_project("ignored title", CONFIG, project_id=pid) == pid

    first = studio.import_batch(pid, task_items(3), model_version="v1")
    assert sorted(first) == ["item-0", "item-1", "item-2"]
    assert len(set(first.values())) == 3
    second = studio.import_batch(pid, task_items(4), model_version="v1")  # the same 3 and one new
    assert list(second) == ["item-0", "item-1", "item-2", "item-3"]
    assert {k: second[k] for k in first} == first
    assert second["item-3"] > max(first.values())  # auto-increment
    assert studio.existing_keys(pid) == second
    counts = studio.counts(pid)
    assert (counts["task_number"], counts["total_predictions_number"]) == (4, 4)
    assert studio.completed_annotations(pid) == []

    accepted = studio.annotate(second["item-0"], verdict="accept", text="draft reply 0")
    edited = studio.annotate(second["item-1"], verdict="edit", text="draft reply 1 (kinder)", comment="softer")
    rejected = studio.annotate(second["item-2"], verdict="reject", text="draft reply 2", comment="still rude")
    skipped = server.ui.skip(second["item-3"])
    assert accepted < edited < rejected < skipped

    anns = studio.completed_annotations(pid)
    user = server.username
    assert _shape(anns) == [
        ("item-0", "accept", "draft reply 0", "draft reply 0", None, user, 1.0),
        ("item-1", "edit", "draft reply 1 (kinder)", "draft reply 1", "softer", user, 1.0),
        ("item-2", "reject", "draft reply 2", "draft reply 2", "still rude", user, 1.0),
    ]
    assert [a.annotation_id for a in anns] == [accepted, edited, rejected]
    assert [a.task_id for a in anns] == [second["item-0"], second["item-1"], second["item-2"]]
    for a in anns:
        assert TIMESTAMP.match(a.updated_at), a.updated_at
        assert a.created_at is not None and TIMESTAMP.match(a.created_at), a.created_at
    assert anns[0].updated_at < anns[1].updated_at < anns[2].updated_at

    targeted = studio.annotations_for_tasks(pid, [second["item-1"], second["item-3"]])
    assert _shape(targeted) == _shape(anns[1:2])  # the skip on item-3 is no verification
    assert studio.annotations_for_tasks(pid, []) == []

    exported = studio.export_annotations(pid)
    assert [r["annotation"] for r in exported] == anns
    assert [(r["data"][KEY_FIELD], r["data"]["cluster"], r["model_version"]) for r in exported] == [
        ("item-0", 0, "v1"), ("item-1", 1, "v1"), ("item-2", 2, "v1"),
    ]
    assert [r["score"] for r in exported] == pytest.approx([0.1, 0.11, 0.12])

    assert studio.counts(pid) == {
        "task_number": 4,
        "finished_task_number": 3,  # a skip does not finish a task under the default skip queue
        "num_tasks_with_annotations": 3,
        "total_annotations_number": 3,
        "skipped_annotations_number": 1,
        "total_predictions_number": 4,
    }


def test_contract_edit_delete_and_task_removal(server: Server) -> None:
    studio, ui = server.studio, server.ui
    pid = studio.ensure_project(f"contract-ui-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = studio.import_batch(pid, task_items(3), model_version="v1")
    a0 = studio.annotate(ids["item-0"], verdict="accept", text="draft reply 0")
    a1 = studio.annotate(ids["item-1"], verdict="accept", text="draft reply 1")
    before = {a.annotation_id: a for a in studio.completed_annotations(pid)}

    ui.update_annotation(a0, verdict="reject")
    ui.update_annotation(a1, text="draft reply 1, reworded")
    after = {a.annotation_id: a for a in studio.completed_annotations(pid)}
    assert (after[a0].verdict, after[a0].text) == ("reject", "draft reply 0")
    assert (after[a1].verdict, after[a1].text) == ("edit", "draft reply 1, reworded")
    assert after[a0].updated_at > before[a0].updated_at
    assert after[a0].created_at == before[a0].created_at

    ui.delete_annotation(a0)
    assert [a.annotation_id for a in studio.completed_annotations(pid)] == [a1]
    ui.delete_task(ids["item-1"])
    assert studio.completed_annotations(pid) == []
    assert studio.existing_keys(pid) == {"item-0": ids["item-0"], "item-2": ids["item-2"]}
    counts = studio.counts(pid)
    assert (counts["task_number"], counts["total_annotations_number"], counts["total_predictions_number"]) == (2, 0, 2)
    # a deleted task's key is free again: importing it makes a new task
    again = studio.import_batch(pid, task_items(2), model_version="v2")
    assert again["item-0"] == ids["item-0"]
    assert again["item-1"] not in ids.values()


def test_contract_duplicates_of_a_key_keep_the_copy_worked_on_else_the_one_with_its_prediction(
    server: Server,
) -> None:
    """An import committed twice leaves two tasks per key: import_batch keeps the copy someone worked on,
    else the one with its prediction (whatever its id), deletes the others, and gives the kept one its
    prediction if it has none."""
    studio, ui = server.studio, server.ui
    pid = studio.ensure_project(f"contract-dup-{uuid.uuid4().hex[:8]}", CONFIG)
    items = task_items(3)
    payloads = [Studio._task_payload(item, "v1", where="test") for item in items]
    ui.import_raw(pid, [{"data": p["data"]} for p in payloads[:2]])  # bare copies first: the lower ids
    full = ui.import_raw(pid, payloads[:2])
    (worked,) = ui.import_raw(pid, [{"data": payloads[2]["data"]}])
    ui.skip(worked)  # someone worked on the bare copy of item-2
    ui.import_raw(pid, payloads[2:])
    expected = {"item-0": full[0], "item-1": full[1], "item-2": worked}
    assert studio.existing_keys(pid) == expected
    assert studio.counts(pid)["task_number"] == 6

    assert studio.import_batch(pid, items, model_version="v1") == expected
    assert studio.existing_keys(pid) == expected
    counts = studio.counts(pid)
    assert (counts["task_number"], counts["total_predictions_number"]) == (3, 3)


def test_contract_gone_annotations_are_those_no_longer_holding_a_verification(server: Server) -> None:
    studio, ui = server.studio, server.ui
    pid = studio.ensure_project(f"contract-gone-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = studio.import_batch(pid, task_items(4), model_version="v1")
    kept = studio.annotate(ids["item-0"], verdict="accept", text="draft reply 0")
    deleted = studio.annotate(ids["item-1"], verdict="accept", text="draft reply 1")
    emptied = studio.annotate(ids["item-2"], verdict="edit", text="a reply")
    skipped = ui.skip(ids["item-3"])
    ui.delete_annotation(deleted)
    ui.update_annotation(emptied, text="")
    assert studio.gone_annotations([kept, deleted, emptied, skipped, 10**8]) == {deleted, emptied, skipped, 10**8}
    assert studio.gone_annotations([]) == set()


def test_contract_unknown_ids_are_404(server: Server) -> None:
    with pytest.raises(StudioError) as err:
        server.studio.counts(10**8)
    assert err.value.status == 404
    pid = server.studio.ensure_project(f"contract-404-{uuid.uuid4().hex[:8]}", CONFIG)
    with pytest.raises(StudioError) as err:
        server.studio.annotate(10**8, verdict="accept", text="x")
    assert err.value.status == 404
    with pytest.raises(ValueError, match="verdict"):
        server.studio.annotate(10**8, verdict="maybe", text="x")  # checked before the server is asked
    bad = task_items(1)
    bad[0]["meta"] = {"draft": "clash"}
    with pytest.raises(ValueError, match="reserved"):
        server.studio.import_batch(pid, bad, model_version="v1")
    assert server.studio.counts(pid)["task_number"] == 0


# --------------------------------------------------------------------------------------------- faults


@pytest.fixture
def mem() -> MemStudio:
    return MemStudio()


@pytest.fixture
def project(mem: MemStudio) -> int:
    return mem.ensure_project("faults", CONFIG)


def test_fail_next_raises_once_before_the_call_takes_effect(mem: MemStudio, project: int) -> None:
    mem.fail_next("import_batch")
    with pytest.raises(StudioError) as err:
        mem.import_batch(project, task_items(2), model_version="v1")
    assert err.value.status == 503
    assert mem.counts(project)["task_number"] == 0  # nothing was imported
    ids = mem.import_batch(project, task_items(2), model_version="v1")  # the fault is spent
    assert sorted(ids) == ["item-0", "item-1"]
    assert mem.counts(project)["task_number"] == 2


def test_fail_next_after_leaves_the_effect_and_a_retry_is_idempotent(mem: MemStudio, project: int) -> None:
    mem.fail_next("import_batch", after=True)  # the server imported, the answer was lost
    with pytest.raises(StudioError):
        mem.import_batch(project, task_items(3), model_version="v1")
    assert mem.counts(project)["task_number"] == 3
    ids = mem.import_batch(project, task_items(3), model_version="v1")
    assert mem.counts(project)["task_number"] == 3  # the retry imported nothing twice
    assert ids == mem.existing_keys(project)

    mem.fail_next("annotate", after=True)
    with pytest.raises(StudioError):
        mem.annotate(ids["item-0"], verdict="accept", text="draft reply 0")
    assert [a.task_id for a in mem.completed_annotations(project)] == [ids["item-0"]]


def test_fail_next_takes_an_exception_class_or_instance_and_queues(mem: MemStudio, project: int) -> None:
    mem.fail_next("counts", TimeoutError)
    mem.fail_next("counts", StudioError("get project counters", None, "ConnectError"))
    with pytest.raises(TimeoutError):
        mem.counts(project)
    with pytest.raises(StudioError) as err:
        mem.counts(project)
    assert err.value.status is None
    assert mem.counts(project)["task_number"] == 0
    mem.fail_next("existing_keys")
    assert mem.import_batch(project, task_items(1), model_version="v1")  # another method is not affected
    with pytest.raises(StudioError):
        mem.existing_keys(project)


def test_fail_next_names_only_request_methods(mem: MemStudio) -> None:
    with pytest.raises(ValueError, match="import_batch"):
        mem.fail_next("import_bach")
    with pytest.raises(ValueError):
        mem.fail_next("fail_next")


def test_dropped_predictions_are_reattached_within_import_batch(
    mem: MemStudio, project: int, caplog: pytest.LogCaptureFixture
) -> None:
    mem.drop_predictions_next_import()
    with caplog.at_level(logging.WARNING):
        ids = mem.import_batch(project, task_items(3), model_version="v-lost")
    assert "re-attaching" in caplog.text
    tasks = {t["id"]: t for t in mem.tasks(project)}
    for item in task_items(3):
        (prediction,) = tasks[ids[item["key"]]]["predictions"]
        assert prediction["model_version"] == "v-lost"
        assert prediction["result"][0]["value"]["text"] == [item["draft"]]
    assert mem.counts(project)["total_predictions_number"] == 3

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        mem.import_batch(project, task_items(1, start=3), model_version="v2")  # the switch is spent
    assert "re-attaching" not in caplog.text
    assert mem.counts(project)["total_predictions_number"] == 4


def test_annotations_start_from_the_latest_prediction(mem: MemStudio, project: int) -> None:
    ids = mem.import_batch(project, task_items(1), model_version="v1")
    ann_id = mem.annotate(ids["item-0"], verdict="accept", text="draft reply 0")
    (task,) = mem.tasks(project)
    (ann,) = task["annotations"]
    assert ann["id"] == ann_id
    assert ann["parent_prediction"] == task["predictions"][0]["id"]
    assert ann["result"][0]["origin"] == "prediction"


def test_calls_are_logged_without_secrets(mem: MemStudio, project: int) -> None:
    mem.import_batch(project, task_items(2), model_version="v1")
    mem.connect_backend(project, "http://127.0.0.1:9090/", basic_auth=("user", "pw-secret"))
    hook = mem.ensure_webhook(project, "http://127.0.0.1:9090/webhook", headers={"X-Secret": "hdr-secret"})
    assert [name for name, _ in mem.calls] == ["ensure_project", "import_batch", "connect_backend", "ensure_webhook"]
    assert mem.calls[1] == ("import_batch", {"project_id": project, "items": 2, "model_version": "v1"})
    assert "secret" not in repr(mem.calls).replace("X-Secret", "")
    # the webhook Label Studio adds on connect is the one ensure_webhook brings to our settings
    (only,) = mem.webhooks(project)
    assert only["id"] == hook
    assert (only["headers"], only["send_for_all_actions"]) == ({"X-Secret": "hdr-secret"}, False)
    assert mem.connect_backend(project, "http://127.0.0.1:9090") == mem.backends(project)[0]["id"]


def test_contract_skips_users_and_overlap(server: Server) -> None:
    studio = server.studio
    pid = studio.ensure_project(f"contract-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = studio.import_batch(pid, task_items(3), model_version="v1")
    email = f"skipper-{uuid.uuid4().hex[:6]}@example.org"
    other = studio.ensure_user(email)
    assert studio.ensure_user(email) == other  # found again, not created twice
    own = studio.skip(ids["item-0"])
    theirs = studio.skip(ids["item-1"], user_id=other)
    studio.annotate(ids["item-2"], verdict="accept", text="draft reply 2", user_id=other)
    skips = studio.skipped_annotations(pid)
    assert [(k.annotation_id, k.task_id, k.key, k.annotator) for k in skips] == [
        (own, ids["item-0"], "item-0", server.username), (theirs, ids["item-1"], "item-1", email)]
    assert all(k.created_at and TIMESTAMP.match(k.created_at) for k in skips)
    assert [k.key for k in studio.skipped_annotations(pid, [ids["item-1"], ids["item-2"]])] == ["item-1"]
    assert studio.skipped_annotations(pid, []) == []
    assert [a.annotator for a in studio.completed_annotations(pid)] == [email]
    server.ui.update_annotation(own, verdict="accept", text="draft reply 0")  # the skip re-submitted as a verdict
    server.ui.delete_annotation(theirs)
    assert studio.gone_skips([own, theirs]) == {own, theirs} and studio.skipped_annotations(pid) == []
    studio.set_overlap(pid, 2)
    studio.set_overlap(pid, 2)  # idempotent
    assert studio.counts(pid)["task_number"] == 3
