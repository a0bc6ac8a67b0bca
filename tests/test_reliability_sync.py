"""Reliability of the round engine's import and sync: defects A to D of the reliability issue.

Where Label Studio's own behaviour is the point (a lost project, a page-size cap, a task deleted while
a listing is read, annotations without a response) the test drives a real server; where a fault must
land at a precise point (an answer lost after the import took effect, a crash before predictions are
re-attached, a listing that misses an annotation) it drives MemStudio. No test sleeps: every wait is a
poll with a deadline.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loop import localstudio, rounds
from loop.config import load_settings
from loop.ledger import Ledger
from loop.localstudio import LocalStudio, running
from loop.studio import KEY_FIELD, ImportOutcomeUnknown, Studio, StudioError
from loop.teacher import Draft
from tests.support import task_items
from tests.support.memstudio import MemStudio

ROOT = Path(__file__).resolve().parent.parent
LABEL_CONFIG = (ROOT / "label_config" / "style_transfer.xml").read_text()
PAGE_CAP = 20  # the capped server's TASK_API_PAGE_SIZE_MAX: far below Studio's page size of 1000
HTTP_TIMEOUT = 60


# --------------------------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(ls: LocalStudio, method: str, path: str, **kw: Any) -> Any:
    """A raw REST call as a browser or an admin script makes it (kept apart from loop.studio on purpose)."""
    reply = requests.request(method, f"{ls.url}{path}", headers={"Authorization": f"Token {ls.token}"},
                             timeout=HTTP_TIMEOUT, **kw)
    assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text[:300]}"
    return reply.json() if reply.content else None


def rest_tasks(ls: LocalStudio, project_id: int) -> list[dict]:
    """Every task of a project with annotations and predictions, paged by the server's reported total."""
    out: list[dict] = []
    page = 1
    while True:
        body = rest(ls, "GET", "/api/tasks/", params={"project": project_id, "fields": "all", "page": page,
                                                      "page_size": PAGE_CAP})
        out += body["tasks"]
        if not body["tasks"] or len(out) >= body["total"]:
            return out
        page += 1


def new_context(tmp_path: Path, studio: Any) -> rounds.Context:
    """A fresh ledger and a fresh Label Studio project (its title in the ledger's meta `title`)."""
    settings = load_settings(data_dir=str(tmp_path / f"ll-{uuid.uuid4().hex[:6]}"))
    ledger = Ledger(settings.ledger_path)
    title = f"sync {uuid.uuid4().hex[:8]}"
    ledger.set_meta("title", title)
    project = studio.ensure_project(title, LABEL_CONFIG)
    return rounds.Context(settings, ledger, studio, project_id=project)


def distilled_round(ctx: rounds.Context, n: int) -> int:
    """A round of n new pool items with their teacher drafts, in state `distilled` (next: the import)."""
    tag = uuid.uuid4().hex[:6]
    texts = [f"source {tag} {i}" for i in range(n)]
    ctx.ledger.add_pool([{"text": t, "norm": t} for t in texts])
    ids = [row["id"] for row in ctx.ledger.pool_items() if row["text"] in set(texts)]
    round_id = ctx.ledger.create_round(strategy="stratified", budget=n, learner_version="v0",
                                       items=[{"pool_id": p, "cluster": 0, "score": 0.5} for p in ids])
    ctx.ledger.set_drafts(round_id, {p: Draft(f"prompt-{p}", f"draft {tag} {p}") for p in ids})
    ctx.ledger.set_round_state(round_id, "distilled")
    return round_id


def imported_round(ctx: rounds.Context, n: int) -> int:
    """A round of n items imported into ctx's project by the state machine's own step."""
    round_id = distilled_round(ctx, n)
    step = rounds.advance(ctx)
    assert (step.round_id, step.state) == (round_id, "imported"), step
    return round_id


def keys_of(ctx: rounds.Context, round_id: int) -> set[str]:
    return {rounds.task_key(round_id, b["pool_id"]) for b in ctx.ledger.batch(round_id)}


def assert_one_task_per_key_with_its_draft(ctx: rounds.Context, round_id: int, tasks: list[dict]) -> None:
    """Exactly one task per key of the round, each with the draft as its prediction, and the ledger's task
    ids are those tasks."""
    copies = Counter(t["data"][KEY_FIELD] for t in tasks)
    assert set(copies) == keys_of(ctx, round_id)
    assert all(n == 1 for n in copies.values()), f"duplicated tasks: {copies}"
    by_key = {t["data"][KEY_FIELD]: t for t in tasks}
    for b in ctx.ledger.batch(round_id):
        task = by_key[rounds.task_key(round_id, b["pool_id"])]
        assert b["task_id"] == task["id"]
        assert [p["result"][0]["value"]["text"] for p in task["predictions"]] == [[b["draft"]]], task["id"]


@pytest.fixture
def mem_ctx(tmp_path: Path) -> rounds.Context:
    """A round context on a fresh in-memory Label Studio."""
    return new_context(tmp_path, MemStudio())


@pytest.fixture(scope="module")
def capped_label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStudio]:
    """A second real Label Studio whose tasks API serves at most PAGE_CAP tasks a page whatever page_size
    the client asks for (settings.TASK_API_PAGE_SIZE_MAX, read from LABEL_STUDIO_TASK_API_PAGE_SIZE_MAX);
    one for this module, about 30 s cold. localstudio passes only whitelisted variables to the server,
    so the cap is added to the environment it builds, for this start only."""
    build_env = localstudio._server_env

    def capped_env(data_dir: Path, creds: dict[str, str]) -> dict[str, str]:
        return {**build_env(data_dir, creds), "LABEL_STUDIO_TASK_API_PAGE_SIZE_MAX": str(PAGE_CAP)}

    patch = pytest.MonkeyPatch()
    patch.setattr(localstudio, "_server_env", capped_env)
    try:
        with running(tmp_path_factory.mktemp("capped-label-studio"), port=_free_port(),
                     venv_dir=ROOT / ".venv-ls", timeout=180) as ls:
            patch.undo()
            yield ls
    finally:
        patch.undo()


# --------------------------------------------------------------------------------------------- A


def test_verifications_of_a_lost_project_survive_a_full_sync_of_its_replacement(tmp_path, studio, label_studio):
    """Defect A: the verifications table has no project scope. When Label Studio lost the project a round
    was imported into (404) and a new, empty project took its place, the next full sync read nothing
    and withdrew every verification the lost project had given."""
    ctx = new_context(tmp_path, studio)
    lost = ctx.project_id
    round_id = imported_round(ctx, 3)
    for b in ctx.ledger.batch(round_id):
        studio.annotate(b["task_id"], verdict="accept", text=b["draft"])
    assert rounds.sync_verifications(ctx, full=True) == 3

    rest(label_studio, "DELETE", f"/api/projects/{lost}/")  # Label Studio loses the project
    ctx.project_id = studio.ensure_project(ctx.ledger.find_meta("title"), LABEL_CONFIG, project_id=lost)
    assert ctx.project_id != lost  # a new, empty project is in use

    assert rounds.sync_verifications(ctx, full=True) == 0
    assert len(ctx.ledger.verifications(round_id)) == 3
    assert ctx.ledger.round_progress(round_id)["verified"] == 3


# --------------------------------------------------------------------------------------------- B


def test_the_capped_server_really_serves_short_pages(capped_label_studio):
    """The premise of the tests below: the server caps page_size, so a page of 1000 holds PAGE_CAP tasks."""
    studio = Studio(capped_label_studio.url, capped_label_studio.token)
    project = studio.ensure_project(f"cap {uuid.uuid4().hex[:8]}", LABEL_CONFIG)
    studio.import_batch(project, task_items(PAGE_CAP + 5), model_version="v1")
    body = rest(capped_label_studio, "GET", "/api/tasks/", params={"project": project, "page_size": 1000})
    assert (len(body["tasks"]), body["total"]) == (PAGE_CAP, PAGE_CAP + 5)


def test_a_full_sync_past_the_servers_page_cap_reads_every_task_and_withdraws_nothing(
    tmp_path, capped_label_studio
):
    """Defect B: `Studio._iter_tasks` stopped at the first short page. A server whose
    TASK_API_PAGE_SIZE_MAX is below the page size asked for answers short pages, so only page 1 was
    read: the full sync withdrew every verification on later pages, and `existing_keys` was partial, so
    a resumed import imported the tasks of later pages a second time."""
    ls = capped_label_studio
    studio = Studio(ls.url, ls.token)
    ctx = new_context(tmp_path, studio)
    n = 2 * PAGE_CAP + 7
    round_id = imported_round(ctx, n)
    for b in ctx.ledger.batch(round_id):
        studio.annotate(b["task_id"], verdict="accept", text=b["draft"])
    # what the webhooks delivered: every annotation, read here straight from the REST API
    rows = [{"annotation_id": a["id"], "task_id": t["id"], "round_id": round_id,
             "pool_id": rounds.parse_task_key(t["data"][KEY_FIELD])[1], "verdict": "accept",
             "target": t["data"]["draft"], "draft": t["data"]["draft"], "updated_at": a["updated_at"]}
            for t in rest_tasks(ls, ctx.project_id) for a in t["annotations"]]
    assert len(rows) == n
    ctx.ledger.record_verifications(rows)

    assert rounds.sync_verifications(ctx, full=True) == 0  # nothing new, nothing withdrawn
    assert len(ctx.ledger.verifications(round_id)) == n
    assert len(studio.completed_annotations(ctx.project_id)) == n
    assert set(studio.existing_keys(ctx.project_id)) == keys_of(ctx, round_id)
    rounds.import_round(ctx, round_id)  # a resumed import finds every key: nothing is imported twice
    assert studio.counts(ctx.project_id)["task_number"] == n


def test_a_task_deleted_while_a_listing_is_read_hides_no_later_task(capped_label_studio, monkeypatch):
    """Defect B: paging by page number skips a task when an earlier one is deleted between two pages
    (every later task moves one place up, and the first of the next page lands on the page already
    read); a task listing must still show every task that was there throughout."""
    ls = capped_label_studio
    studio = Studio(ls.url, ls.token)
    project = studio.ensure_project(f"deleted {uuid.uuid4().hex[:8]}", LABEL_CONFIG)
    ids = studio.import_batch(project, task_items(2 * PAGE_CAP + 5), model_version="v1")
    first = min(ids.values())
    list_page = studio._ls.tasks.list
    pages: list[int] = []

    def list_then_delete(**kw: Any) -> Any:
        page = list_page(**kw)
        if not pages:  # an admin deletes the first task right after the first page was read
            rest(ls, "DELETE", f"/api/tasks/{first}/")
        pages.append(len(page.items or []))
        return page

    monkeypatch.setattr(studio._ls.tasks, "list", list_then_delete)
    listed = studio.existing_keys(project)
    monkeypatch.undo()
    throughout = {k: v for k, v in ids.items() if v != first}
    assert {k: listed[k] for k in throughout if k in listed} == throughout
    assert set(throughout) <= set(listed), sorted(set(throughout) - set(listed))


@pytest.mark.parametrize("full", [True, False], ids=["full", "targeted"])
def test_an_annotation_missing_from_a_listing_is_withdrawn_only_when_label_studio_confirms_it_is_gone(
    mem_ctx, full
):
    """Defect B: a verification was withdrawn as soon as its annotation was missing from a listing, so
    an incomplete listing withdrew annotations Label Studio still has. A missing entry is only a reason
    to ask for that annotation: withdrawn when Label Studio answers 404 (deleted) or it no longer
    holds a verification (a skip now, or its response emptied), kept otherwise."""
    ctx, mem = mem_ctx, mem_ctx.studio
    round_id = imported_round(ctx, 4)
    batch = ctx.ledger.batch(round_id)
    ann = [mem.annotate(b["task_id"], verdict="accept", text=b["draft"]) for b in batch]
    assert rounds.sync_verifications(ctx, full=True) == 4

    mem.omit_from_next_listing(ann[0], ann[1], ann[2])  # the listing misses three of them ...
    mem.delete_annotation(ann[1])  # ... of which one is deleted
    mem.update_annotation(ann[2], text="")  # and one emptied: no verification any more
    if not full:
        for a, b in zip(ann[:3], batch[:3], strict=True):
            ctx.ledger.record_event("ANNOTATION_UPDATED", ctx.project_id, b["task_id"], a)
    assert rounds.sync_verifications(ctx, full=full) == 2
    assert [v["annotation_id"] for v in ctx.ledger.verifications(round_id)] == [ann[0], ann[3]]
    assert [h["change"] for h in ctx.ledger.verification_history(ann[1])] == ["created", "withdrawn"]
    assert rounds.sync_verifications(ctx, full=True) == 0  # and the complete listing agrees


# --------------------------------------------------------------------------------------------- C


def test_import_batch_repairs_keyed_tasks_left_without_their_prediction(studio, label_studio):
    """Defect C: tasks that an earlier import left without predictions (the process died between the
    import and the re-attach, or the re-attach failed) were found by key on the next call and returned
    as they were: annotators got tasks with no draft to verify."""
    project = studio.ensure_project(f"repair {uuid.uuid4().hex[:8]}", LABEL_CONFIG)
    items = task_items(4)
    bare = [{"data": Studio._task_payload(item, "v1", where="test")["data"]} for item in items[:3]]
    rest(label_studio, "POST", f"/api/projects/{project}/import", json=bare)  # what the crash left behind
    ids = studio.import_batch(project, items, model_version="v1")
    tasks = {t["id"]: t for t in rest_tasks(label_studio, project)}
    assert sorted(tasks) == sorted(ids.values())
    for item in items:
        (prediction,) = tasks[ids[item["key"]]]["predictions"]
        assert prediction["result"][0]["value"]["text"] == [item["draft"]]
    assert studio.import_batch(project, items, model_version="v1") == ids  # idempotent: nothing added twice
    assert studio.counts(project)["total_predictions_number"] == 4


@pytest.mark.parametrize("death", [KeyboardInterrupt, StudioError("re-attach predictions", None, "ConnectError")],
                         ids=["killed", "reattach-failed"])
def test_tasks_imported_without_their_drafts_get_them_on_the_next_tick(mem_ctx, monkeypatch, death):
    """Defect C: when re-attaching the predictions a lossy import dropped failed, or the process died
    before it, the next tick found every key, moved the round on and left its tasks without drafts."""
    ctx, mem = mem_ctx, mem_ctx.studio
    round_id = distilled_round(ctx, 5)
    mem.drop_predictions_next_import()

    def dies(*args: Any, **kwargs: Any) -> None:
        raise death() if isinstance(death, type) else death

    monkeypatch.setattr(mem, "_reattach_predictions", dies)
    with pytest.raises((KeyboardInterrupt, StudioError)):
        rounds.advance(ctx)
    assert ctx.ledger.get_round(round_id)["state"] == "distilled"
    monkeypatch.undo()
    assert rounds.advance(ctx).state == "imported"
    assert_one_task_per_key_with_its_draft(ctx, round_id, mem.tasks(ctx.project_id))


def test_an_annotation_without_response_text_is_no_verification(tmp_path, studio, label_studio, caplog):
    """Defect C: an annotation whose response is missing (the task had no draft to show) or empty was
    read with the draft as its text when the response was missing, so a draft the annotator never saw
    was recorded as accepted, and an emptied box as an edit to "". Such an annotation is invalid: it is
    left out with a warning. A reject needs no response and stays a reject."""
    ctx = new_context(tmp_path, studio)
    round_id = imported_round(ctx, 4)
    tasks = [b["task_id"] for b in ctx.ledger.batch(round_id)]

    def region(name: str, kind: str, value: dict) -> dict:
        return {"from_name": name, "to_name": "source", "type": kind, "value": value}

    accept, reject = region("verdict", "choices", {"choices": ["accept"]}), region("verdict", "choices",
                                                                                    {"choices": ["reject"]})
    results = {tasks[0]: [accept], tasks[1]: [region("response", "textarea", {"text": [""]}), accept],
               tasks[2]: [reject]}
    for task_id, result in results.items():
        rest(label_studio, "POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})
    kept = studio.annotate(tasks[3], verdict="accept", text=ctx.ledger.batch(round_id)[3]["draft"])

    with caplog.at_level(logging.WARNING, logger="loop.studio"):
        rounds.sync_verifications(ctx, full=True)
    assert {v["task_id"]: v["verdict"] for v in ctx.ledger.verifications(round_id)} == {
        tasks[2]: "reject", tasks[3]: "accept"}
    assert [v["annotation_id"] for v in ctx.ledger.verifications(round_id) if v["task_id"] == tasks[3]] == [kept]
    assert caplog.text.count("no response text") == 2


# --------------------------------------------------------------------------------------------- D


def lost_answer() -> ImportOutcomeUnknown:
    """The failure of an import whose answer never came: the server may have committed it, or may yet."""
    return ImportOutcomeUnknown("import 5 tasks (injected)", None, "ReadTimeout: timed out")


def test_an_import_whose_answer_was_lost_leaves_one_task_per_key_with_its_draft(mem_ctx):
    """Defect D: the server had committed an import whose answer was lost, and committed a second copy
    of it, without predictions (its lock retry); the next tick kept the lowest id per key and left the
    other copies in the project: each item twice in front of annotators."""
    ctx, mem = mem_ctx, mem_ctx.studio
    round_id = distilled_round(ctx, 5)
    mem.fail_next("import_batch", lost_answer(), after=True)
    with pytest.raises(StudioError):
        rounds.advance(ctx)
    committed = mem.tasks(ctx.project_id)
    assert len(committed) == 5
    mem.import_raw(ctx.project_id, [{"data": t["data"]} for t in committed])  # the second copy, bare

    assert rounds.advance(ctx).state == "imported"
    assert_one_task_per_key_with_its_draft(ctx, round_id, mem.tasks(ctx.project_id))


def test_an_import_with_an_unknown_outcome_is_awaited_not_repeated(mem_ctx, monkeypatch):
    """Defect D: Label Studio retries a locked import server-side for longer than the client waits for
    its answer. The next tick listed the keys before the server committed, imported a second copy, and
    the server's late commit (without predictions) made every task twice. Its keys must be awaited
    (with a deadline) before anything is imported again, and the late copy given its draft."""
    ctx, mem = mem_ctx, mem_ctx.studio
    monkeypatch.setattr(rounds, "IMPORT_WAIT_S", 0.0)  # one look per tick: no waiting here
    round_id = distilled_round(ctx, 5)
    payloads = [{"data": {"text": b["text"], "draft": b["draft"], KEY_FIELD: rounds.task_key(round_id, b["pool_id"])}}
                for b in ctx.ledger.batch(round_id)]
    mem.fail_next("import_batch", lost_answer())  # timed out; the server is still retrying it
    with pytest.raises(StudioError):
        rounds.advance(ctx)
    with pytest.raises(StudioError, match="awaiting"):
        rounds.advance(ctx)  # its keys have not appeared: nothing is imported again
    assert mem.tasks(ctx.project_id) == []
    assert ctx.ledger.get_round(round_id)["state"] == "distilled"

    mem.import_raw(ctx.project_id, payloads)  # the server's retry commits, without the predictions
    assert rounds.advance(ctx).state == "imported"
    assert_one_task_per_key_with_its_draft(ctx, round_id, mem.tasks(ctx.project_id))


def test_an_import_whose_keys_never_appear_is_repeated_once_the_server_gave_up(mem_ctx, monkeypatch):
    """Defect D's limit: an import whose outcome is unknown is awaited only as long as the server can
    still commit it (its lock retry); after that the round imports its items again, once."""
    ctx, mem = mem_ctx, mem_ctx.studio
    round_id = distilled_round(ctx, 3)
    mem.fail_next("import_batch", lost_answer())
    with pytest.raises(StudioError):
        rounds.advance(ctx)
    monkeypatch.setattr(rounds, "IMPORT_SETTLE_S", 0.0)  # the server's retry window is over
    assert rounds.advance(ctx).state == "imported"
    assert_one_task_per_key_with_its_draft(ctx, round_id, mem.tasks(ctx.project_id))


def test_an_import_the_real_server_answers_too_late_is_awaited_and_imported_once(tmp_path, studio, monkeypatch):
    """Defect D on the real server: the client gives up on an import that Label Studio goes on to commit.
    Studio reports that as ImportOutcomeUnknown (not a plain failure), and the next tick awaits the
    import's keys instead of importing a second copy beside it."""
    ctx = new_context(tmp_path, studio)
    round_id = distilled_round(ctx, 2000)  # about 2 s for the server to commit
    monkeypatch.setattr("loop.studio.IMPORT_TIMEOUT_S", 0.2)
    with pytest.raises(ImportOutcomeUnknown):
        rounds.advance(ctx)
    monkeypatch.undo()
    assert rounds.advance(ctx).state == "imported"
    counts = studio.counts(ctx.project_id)
    assert (counts["task_number"], counts["total_predictions_number"]) == (2000, 2000)  # one copy, not two
    ledger_ids = {rounds.task_key(round_id, b["pool_id"]): b["task_id"] for b in ctx.ledger.batch(round_id)}
    assert studio.existing_keys(ctx.project_id) == ledger_ids
