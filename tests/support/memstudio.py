"""An in-memory Label Studio with the public interface of `loop.studio.Studio`, for fast tests.

MemStudio plays the server: projects, tasks, predictions, annotations, ML backends and webhooks live
in dicts with Label Studio's auto-increment ids, and annotations are stored as the raw ``result``
regions the real client sends. What the client reads back goes through loop/studio.py's own code
(`Studio._task_payload` for validation, `Studio._parse_annotation` for verdict, text and draft), so
`loop.rounds.advance` sees what it would see against a real server, in microseconds.

Test-only extras, none of which the real client has: `update_annotation`, `delete_annotation`
and `delete_task` (what annotators and admins do in the UI), `import_raw` (tasks imported as they are:
an admin's import, or the late commit of an import whose answer was lost), `fail_next` (crash points:
a call that fails before or after taking effect), `drop_predictions_next_import` (the bulk-import retry
that loses its predictions), `omit_from_next_listing` (a listing that misses annotations Label Studio
still has), `calls` (every public call, for assertions) and read-only views `tasks`, `webhooks`,
`backends`. tests/test_memstudio.py runs one contract against both this and the real server.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from loop.localstudio import USERNAME
from loop.studio import (
    FROM_RESPONSE,
    FROM_VERDICT,
    KEY_FIELD,
    TO_NAME,
    VERDICTS,
    WEBHOOK_ACTIONS,
    Annotation,
    Skip,
    Studio,
    StudioError,
    TaskCopy,
    _norm,
    annotation_result,
    missing_response,
    new_task_payloads,
    region_id,
    repair_payloads,
    resolve_copies,
)

log = logging.getLogger(__name__)

USER_ID = 1  # the one user of a fresh Label Studio: the admin that owns the API key
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # Django REST's rendering of a UTC datetime; fixed width, so sortable

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Fault:
    error: BaseException | type[BaseException]
    after: bool

    def raise_(self) -> None:
        raise self.error() if isinstance(self.error, type) else self.error


def _summary(name: str, value: Any) -> Any:
    """A short, secret-free stand-in for one argument in `MemStudio.calls`."""
    if name == "basic_auth" and value is not None:
        return (value[0], "***")
    if isinstance(value, dict):
        return sorted(value)  # header names, not their values (a shared secret travels there)
    if isinstance(value, (list, tuple)):
        return len(value) if any(isinstance(v, dict) for v in value) else tuple(value)
    return value


def _served(method: F) -> F:
    """Make a method one "request" to the double: logged in `calls`, serialised by the lock, and
    subject to the faults queued by `fail_next` (before the call, or after it took effect)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: MemStudio, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        summary = {k: _summary(k, v) for k, v in bound.arguments.items() if k != "self"}
        with self._lock:
            self.calls.append((method.__name__, summary))
            queued = self._faults.get(method.__name__)
            fault = queued.popleft() if queued else None
            if fault is not None and not fault.after:
                fault.raise_()
            result = method(self, *args, **kwargs)
            if fault is not None:
                fault.raise_()
            return result

    call._served = True  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


class MemStudio:
    """An in-memory stand-in for `loop.studio.Studio`: same public methods, signatures and answers,
    no server; plus fault injection and UI actions so that round logic can be tested in milliseconds."""

    def __init__(self, username: str = USERNAME) -> None:
        self.url = "mem://label-studio"
        self.username = username
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.RLock()
        self._faults: dict[str, deque[_Fault]] = {}
        self._drop_predictions = False
        self._omit: set[int] = set()
        self._invalid_warned: set[int] = set()  # read by Studio._parse_annotation, as on the client
        self._last_time = datetime(2000, 1, 1, tzinfo=timezone.utc)
        self._next_id = {k: 1 for k in ("project", "task", "prediction", "annotation", "backend", "webhook")}
        self._projects: dict[int, dict] = {}
        self._tasks: dict[int, dict] = {}
        self._predictions: dict[int, dict] = {}
        self._annotations: dict[int, dict] = {}
        self._backends: dict[int, dict] = {}
        self._webhooks: dict[int, dict] = {}
        self._users: dict[int, str] = {USER_ID: username}

    def __repr__(self) -> str:
        return f"MemStudio({len(self._projects)} projects, {len(self._tasks)} tasks)"

    # ------------------------------------------------------------------ test controls

    def fail_next(
        self, method_name: str, exc: BaseException | type[BaseException] | None = None, after: bool = False
    ) -> None:
        """Make the next call of `method_name` raise `exc` (default StudioError(..., 503)); with after=True
        the call takes effect first, as when the server did the work but its answer was lost. Faults
        queue up: two fail_next calls fail the next two calls."""
        served = sorted(n for n, m in inspect.getmembers(type(self)) if getattr(m, "_served", False))
        if method_name not in served:
            raise ValueError(f"fail_next: {method_name!r} is not a MemStudio request method (known: {served})")
        if exc is None:
            exc = StudioError(f"{method_name} (injected fault)", 503)
        with self._lock:
            self._faults.setdefault(method_name, deque()).append(_Fault(exc, after))

    def drop_predictions_next_import(self) -> None:
        """Make the next bulk import keep its tasks but lose their predictions and report so in its
        answer (prediction_count 0), as Label Studio does when it retries an import that met a SQLite
        write lock; `import_batch` must then re-attach them, as `Studio.import_batch` does."""
        with self._lock:
            self._drop_predictions = True

    def omit_from_next_listing(self, *annotation_ids: int) -> None:
        """Make the next annotation listing (`completed_annotations` or `annotations_for_tasks`) leave these
        annotations out although they still exist, as a listing that lost a page does."""
        with self._lock:
            self._omit.update(int(a) for a in annotation_ids)

    def _take_omitted(self) -> set[int]:
        omit, self._omit = self._omit, set()
        return omit

    def tasks(self, project_id: int) -> list[dict]:
        """The project's tasks as Label Studio lists them with fields=all (a deep copy): id, data,
        predictions, annotations (skips included), total_annotations, cancelled_annotations,
        total_predictions."""
        with self._lock:
            self._project(project_id, f"list tasks of project {project_id}")
            return [self._task_view(t) for t in self._project_tasks(project_id)]

    def webhooks(self, project_id: int) -> list[dict]:
        """The project's webhooks (a deep copy), including the one connect_backend adds."""
        with self._lock:
            return [copy.deepcopy(h) for h in self._webhooks.values() if h["project"] == project_id]

    def backends(self, project_id: int) -> list[dict]:
        """The project's ML backends (a deep copy)."""
        with self._lock:
            return [copy.deepcopy(b) for b in self._backends.values() if b["project"] == project_id]

    # ------------------------------------------------------------------ server internals

    def _new_id(self, table: str) -> int:
        n = self._next_id[table]
        self._next_id[table] = n + 1
        return n

    def _now(self) -> str:
        """The wall clock, forced to move forward by at least a microsecond per write."""
        now = max(datetime.now(timezone.utc), self._last_time + timedelta(microseconds=1))
        self._last_time = now
        return now.strftime(_TIME_FORMAT)

    def _project(self, project_id: int, what: str) -> dict:
        project = self._projects.get(int(project_id))
        if project is None:
            raise StudioError(what, 404, "detail: Not found.")
        return project

    def _task(self, task_id: int, what: str) -> dict:
        task = self._tasks.get(int(task_id))
        if task is None:
            raise StudioError(what, 404, "detail: Not found.")
        return task

    def _annotation(self, annotation_id: int, what: str) -> dict:
        ann = self._annotations.get(int(annotation_id))
        if ann is None:
            raise StudioError(what, 404, "detail: Not found.")
        return ann

    def _project_tasks(self, project_id: int) -> list[dict]:
        return [t for t in self._tasks.values() if t["project"] == int(project_id)]  # ids ascend: dict order

    def _task_predictions(self, task_id: int) -> list[dict]:
        return [p for p in self._predictions.values() if p["task"] == task_id]

    def _task_annotations(self, task_id: int) -> list[dict]:
        return [a for a in self._annotations.values() if a["task"] == task_id]

    def _task_view(self, task: dict) -> dict:
        annotations = self._task_annotations(task["id"])
        predictions = self._task_predictions(task["id"])
        return copy.deepcopy(
            {
                "id": task["id"],
                "project": task["project"],
                "data": task["data"],
                "created_at": task["created_at"],
                "predictions": predictions,
                "annotations": annotations,
                "total_annotations": sum(not a["was_cancelled"] for a in annotations),
                "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
                "total_predictions": len(predictions),
            }
        )

    def _key_copies(self, project_id: int) -> dict[str, list[TaskCopy]]:
        """Studio._key_copies: the keyed tasks of a project, with what each holds."""
        self._project(project_id, f"list task keys (project {project_id}, tasks after id 0)")
        copies: dict[str, list[TaskCopy]] = {}
        for task in self._project_tasks(project_id):
            key = task["data"].get(KEY_FIELD)
            if key is not None:
                copies.setdefault(str(key), []).append(TaskCopy(
                    task["id"], len(self._task_predictions(task["id"])), len(self._task_annotations(task["id"]))))
        return copies

    def _remove_task(self, task_id: int) -> None:
        del self._tasks[int(task_id)]
        for table in (self._predictions, self._annotations):
            for rid in [rid for rid, row in table.items() if row["task"] == int(task_id)]:
                del table[rid]

    def _add_prediction(self, task_id: int, prediction: dict) -> None:
        pid = self._new_id("prediction")
        self._predictions[pid] = {
            "id": pid,
            "task": task_id,
            "model_version": prediction.get("model_version"),
            "score": prediction.get("score"),
            "result": copy.deepcopy(prediction.get("result") or []),
            "created_at": self._now(),
        }

    def _add_task(self, project_id: int, data: dict) -> int:
        tid = self._new_id("task")
        self._tasks[tid] = {"id": tid, "project": int(project_id), "data": data, "created_at": self._now()}
        return tid

    def _bulk_import(self, project_id: int, payloads: list[dict]) -> tuple[list[int], int]:
        """What POST /api/projects/<id>/import does: (task ids, prediction_count of its answer)."""
        drop, self._drop_predictions = self._drop_predictions, False
        payloads = json.loads(json.dumps(payloads))  # the wire: only JSON survives
        task_ids, kept = [], 0
        for payload in payloads:
            tid = self._add_task(project_id, payload["data"])
            task_ids.append(tid)
            if not drop:
                for prediction in payload.get("predictions") or []:
                    self._add_prediction(tid, prediction)
                    kept += 1
        return task_ids, kept

    def _reattach_predictions(self, project_id: int, payloads: list[dict], task_ids: list[int]) -> None:
        """Studio._reattach_predictions: add the first prediction of each payload whose task has none; raise
        unless every task has one afterwards."""
        missing = {t for t in task_ids if not self._task_predictions(t)}
        for payload, tid in zip(payloads, task_ids, strict=True):
            if tid in missing:
                self._add_prediction(tid, payload["predictions"][0])
        still = {t for t in missing if not self._task_predictions(t)}
        if still:
            raise StudioError(
                f"re-attach predictions in project {project_id}",
                201,
                f"{len(still)} tasks still have no prediction (e.g. task {min(still)})",
            )

    def _annotator(self, ann: dict) -> str | None:
        """Studio._annotator over this server's one user (called by Studio._parse_annotation)."""
        uid = ann.get("completed_by")
        if uid is None:
            return None
        return self._users.get(int(uid), str(uid))

    def _parse(self, ann: dict, task_id: int, key: str, draft: str) -> Annotation | None:
        # the client's own parser: it reads nothing of its instance but `_annotator`, which this class has
        return Studio._parse_annotation(self, ann, task_id, key, draft)  # type: ignore[arg-type]

    def _read_annotations(self, tasks: list[dict], omit: frozenset[int] = frozenset()) -> list[Annotation]:
        """Studio._read_annotations over the given tasks: keyed tasks only, skips left out, by id; `omit`
        is what an incomplete listing misses."""
        out: list[Annotation] = []
        for task in tasks:
            key = task["data"].get(KEY_FIELD)
            if key is None:
                continue
            draft = str(task["data"].get("draft") or "")
            for ann in self._task_annotations(task["id"]):
                if ann["was_cancelled"] or ann["id"] in omit:
                    continue
                parsed = self._parse(copy.deepcopy(ann), task["id"], str(key), draft)
                if parsed is not None:
                    out.append(parsed)
        out.sort(key=lambda a: a.annotation_id)
        return out

    def _annotated_tasks(self, project_id: int) -> list[dict]:
        """The filter `total_annotations > 0`: Label Studio's total_annotations leaves skips out."""
        return [
            t
            for t in self._project_tasks(project_id)
            if any(not a["was_cancelled"] for a in self._task_annotations(t["id"]))
        ]

    def _new_annotation(self, task_id: int, result: list[dict], was_cancelled: bool, parent: int | None,
                        user_id: int | None = None) -> int:
        aid = self._new_id("annotation")
        now = self._now()
        self._annotations[aid] = {
            "id": aid,
            "task": int(task_id),
            "result": result,
            "was_cancelled": was_cancelled,
            "completed_by": USER_ID if user_id is None else int(user_id),
            "lead_time": 1.0 if not was_cancelled else None,
            "parent_prediction": parent,
            "created_at": now,
            "updated_at": now,
        }
        return aid

    # ------------------------------------------------------------------ projects

    @_served
    def ensure_project(self, title: str, label_config: str, project_id: int | None = None) -> int:
        """Reuse project_id if it exists, else a project with this exact title, else create it."""
        project = self._projects.get(int(project_id)) if project_id is not None else None
        if project is None:
            if project_id is not None:
                log.warning("project %s not found; looking for a project titled %r", project_id, title)
            project = next((p for p in self._projects.values() if p["title"] == title), None)
        if project is not None:
            if _norm(project["label_config"]) != _norm(label_config):
                log.warning(
                    "project %s has a different label config than the one given; keeping the project's",
                    project["id"],
                )
            return project["id"]
        pid = self._new_id("project")
        self._projects[pid] = {"id": pid, "title": title, "label_config": label_config, "created_at": self._now()}
        return pid

    @_served
    def counts(self, project_id: int) -> dict:
        """Project counters: task_number, finished_task_number, num_tasks_with_annotations,
        total_annotations_number, skipped_annotations_number, total_predictions_number."""
        self._project(project_id, f"get project {project_id} counters")
        tasks = [self._task_view(t) for t in self._project_tasks(project_id)]
        return {
            "task_number": len(tasks),
            # is_labeled: overlap 1, and under the default skip queue (REQUEUE_FOR_OTHERS) a skip does not finish
            "finished_task_number": sum(t["total_annotations"] > 0 for t in tasks),
            "num_tasks_with_annotations": sum(t["total_annotations"] > 0 for t in tasks),
            "total_annotations_number": sum(t["total_annotations"] for t in tasks),
            "skipped_annotations_number": sum(t["cancelled_annotations"] for t in tasks),
            "total_predictions_number": sum(t["total_predictions"] for t in tasks),
        }

    # ------------------------------------------------------------------ tasks

    @_served
    def existing_keys(self, project_id: int) -> dict[str, int]:
        """labelloop_key -> task id for every task in the project (idempotent import); where a key has
        several tasks, the one `import_batch` keeps."""
        return resolve_copies(self._key_copies(project_id), set())[0]

    @_served
    def import_batch(self, project_id: int, items: list[dict], model_version: str) -> dict[str, int]:
        """Import the items whose key is not in the project yet, each with its draft as a prediction,
        validated as Studio validates them, and leave every item with exactly one task that has a
        prediction: duplicates of a key deleted first (the worked-on, else predicted, else oldest copy
        kept), predictions re-attached where a task has none. Returns key -> task id for ALL items."""
        existing, delete, bare = resolve_copies(self._key_copies(project_id), {str(item["key"]) for item in items})
        for task_id in delete:
            self._remove_task(task_id)
        new = new_task_payloads(items, existing, model_version)
        payloads, repair = repair_payloads(items, existing, bare, model_version)
        if new:
            task_ids, prediction_count = self._bulk_import(project_id, new)
            for payload, task_id in zip(new, task_ids, strict=True):
                existing[payload["data"][KEY_FIELD]] = task_id
            if prediction_count != len(new):
                log.warning(
                    "import into project %s kept %s of %d predictions; re-attaching the missing ones",
                    project_id,
                    prediction_count,
                    len(new),
                )
                payloads += new
                repair += task_ids
        if repair:
            self._reattach_predictions(project_id, payloads, repair)
        return {str(item["key"]): existing[str(item["key"])] for item in items}

    @_served
    def import_raw(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Import task payloads ({"data", "predictions"?}) as they are, with no key check and no validation,
        as an admin's import does, or the late commit of an import whose answer was lost (a lock retry
        commits it without predictions); returns the new task ids."""
        self._project(project_id, f"import {len(tasks)} tasks into project {project_id}")
        task_ids = []
        for payload in json.loads(json.dumps(tasks)):
            tid = self._add_task(project_id, payload["data"])
            for prediction in payload.get("predictions") or []:
                self._add_prediction(tid, prediction)
            task_ids.append(tid)
        return task_ids

    @_served
    def delete_task(self, task_id: int) -> None:
        """Delete a task with its predictions and annotations, as an admin can in the data manager."""
        self._task(task_id, f"delete task {task_id}")
        self._remove_task(task_id)

    # ------------------------------------------------------------------ annotations

    @_served
    def completed_annotations(self, project_id: int) -> list[Annotation]:
        """Every non-cancelled (not skipped) annotation of the tasks carrying a labelloop_key, parsed.
        draft = the task's data draft."""
        self._project(project_id, f"list annotated tasks (project {project_id}, tasks after id 0)")
        return self._read_annotations(self._annotated_tasks(project_id), frozenset(self._take_omitted()))

    @_served
    def annotations_for_tasks(self, project_id: int, task_ids: list[int]) -> list[Annotation]:
        """Like `completed_annotations`, for the given tasks only: the targeted sync a webhook asks for."""
        if not task_ids:
            return []
        self._project(project_id, f"list annotated tasks (project {project_id}, tasks after id 0)")
        wanted = {int(t) for t in task_ids}
        tasks = [t for t in self._project_tasks(project_id) if t["id"] in wanted]
        return self._read_annotations(tasks, frozenset(self._take_omitted()))

    @_served
    def gone_annotations(self, annotation_ids: list[int]) -> set[int]:
        """The annotations among these that hold no verification any more: deleted (what GET answers 404
        for), now a skip, or left without a response."""
        gone: set[int] = set()
        for annotation_id in {int(a) for a in annotation_ids}:
            ann = self._annotations.get(annotation_id)
            if ann is None or ann["was_cancelled"] or missing_response(ann["result"]):
                gone.add(annotation_id)
        return gone

    @_served
    def export_annotations(self, project_id: int) -> list[dict]:
        """Every non-cancelled annotation of the project's annotated tasks, with the task's data and the
        model_version and score of its latest prediction. Tasks without a labelloop_key are included."""
        self._project(project_id, f"export annotated tasks (project {project_id}, tasks after id 0)")
        out: list[dict] = []
        for task in self._annotated_tasks(project_id):
            data = copy.deepcopy(task["data"])
            latest = max(self._task_predictions(task["id"]), key=lambda p: p["id"], default={})
            for ann in self._task_annotations(task["id"]):
                if ann["was_cancelled"]:
                    continue
                parsed = self._parse(
                    copy.deepcopy(ann), task["id"], str(data.get(KEY_FIELD) or ""), str(data.get("draft") or "")
                )
                if parsed is None:
                    continue
                out.append(
                    {
                        "annotation": parsed,
                        "data": data,
                        "model_version": latest.get("model_version"),
                        "score": latest.get("score"),
                    }
                )
        out.sort(key=lambda r: r["annotation"].annotation_id)
        return out

    @_served
    def set_overlap(self, project_id: int, annotations: int) -> None:
        """Make every task of the project want `annotations` people (kept as the project's maximum_annotations)."""
        self._project(project_id, f"get project {project_id}")["maximum_annotations"] = int(annotations)

    def overlap(self, project_id: int) -> int:
        """The project's maximum_annotations (1 until set_overlap)."""
        return int(self._project(project_id, f"get project {project_id}").get("maximum_annotations", 1))

    @_served
    def ensure_user(self, email: str) -> int:
        """The id of the user with this email, created if there is none."""
        for uid, name in self._users.items():
            if name.lower() == email.lower():
                return uid
        uid = max(self._users) + 1
        self._users[uid] = email
        return uid

    @_served
    def skipped_annotations(self, project_id: int, task_ids: list[int] | None = None) -> list[Skip]:
        """Every skip of the keyed tasks (or of the given tasks only), by annotation id."""
        self._project(project_id, f"list skipped tasks (project {project_id}, tasks after id 0)")
        if task_ids is not None and not task_ids:
            return []
        wanted = None if task_ids is None else {int(t) for t in task_ids}
        out = []
        for task in self._project_tasks(project_id):
            key = task["data"].get(KEY_FIELD)
            if key is None or (wanted is not None and task["id"] not in wanted):
                continue
            for ann in self._task_annotations(task["id"]):
                if ann["was_cancelled"]:
                    out.append(Skip(ann["id"], task["id"], str(key), self._annotator(ann), ann["created_at"],
                                    ann["updated_at"]))
        return sorted(out, key=lambda k: k.annotation_id)

    @_served
    def gone_skips(self, annotation_ids: list[int]) -> set[int]:
        """The skips among these that are deleted or re-submitted as a verdict."""
        return {int(a) for a in annotation_ids
                if int(a) not in self._annotations or not self._annotations[int(a)]["was_cancelled"]}

    @_served
    def annotate(self, task_id: int, *, verdict: str, text: str, comment: str | None = None,
                 user_id: int | None = None) -> int:
        """Create an annotation as Studio.annotate sends it (response region from the latest prediction,
        a verdict choice, an optional comment), as `user_id`; returns its id."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self._task(task_id, f"get task {task_id}")
        parent = max((p["id"] for p in self._task_predictions(int(task_id))), default=None)
        result = annotation_result(verdict, text, comment, from_prediction=parent is not None)
        return self._new_annotation(int(task_id), result, was_cancelled=False, parent=parent, user_id=user_id)

    @_served
    def skip(self, task_id: int, *, user_id: int | None = None) -> int:
        """Skip a task as the labeling stream's Skip button does: an annotation with was_cancelled=True
        and no result, which Label Studio counts as skipped and completed_annotations leaves out."""
        self._task(task_id, f"skip task {task_id}")
        return self._new_annotation(int(task_id), [], was_cancelled=True, parent=None, user_id=user_id)

    @_served
    def update_annotation(self, annotation_id: int, *, verdict: str | None = None, text: str | None = None) -> None:
        """Change an annotation's verdict and/or response text, as an annotator re-submitting it in the
        UI does (a re-submitted skip becomes a normal annotation); updated_at moves forward."""
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        ann = self._annotation(annotation_id, f"update annotation {annotation_id}")
        wanted = {FROM_RESPONSE: None if text is None else ("textarea", {"text": [text]}),
                  FROM_VERDICT: None if verdict is None else ("choices", {"choices": [verdict]})}
        for name, change in wanted.items():
            if change is None:
                continue
            region = next((r for r in ann["result"] if r.get("from_name") == name), None)
            if region is None:
                region = {"id": region_id(), "from_name": name, "to_name": TO_NAME, "origin": "manual"}
                ann["result"].append(region)
            region["type"], region["value"] = change
        ann["was_cancelled"] = False
        ann["updated_at"] = self._now()

    @_served
    def delete_annotation(self, annotation_id: int) -> None:
        """Delete an annotation, as an annotator or admin can in the UI (ANNOTATIONS_DELETED)."""
        self._annotation(annotation_id, f"delete annotation {annotation_id}")
        del self._annotations[int(annotation_id)]

    # ------------------------------------------------------------------ ML backend and webhook

    @_served
    def connect_backend(
        self, project_id: int, url: str, title: str = "labelloop", basic_auth: tuple[str, str] | None = None
    ) -> int:
        """Idempotent: reuse an ML backend with this url on the project (updating its credentials), else
        create it, and add the webhook to <url>/webhook for all actions that Label Studio adds itself.
        Unlike the server, this does not call the backend: it need not be running."""
        self._project(project_id, f"list ML backends of project {project_id}")
        want = url.rstrip("/")
        auth: dict[str, Any] = {"auth_method": "NONE"}
        if basic_auth is not None:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
        for backend in self._backends.values():
            if backend["url"] == want and backend["project"] == int(project_id):
                if basic_auth is not None or backend["auth_method"] != "NONE":
                    backend.update(auth)
                return backend["id"]
        bid = self._new_id("backend")
        self._backends[bid] = {"id": bid, "project": int(project_id), "url": want, "title": title, **auth}
        hid = self._new_id("webhook")
        self._webhooks[hid] = {"id": hid, "project": int(project_id), "url": f"{want}/webhook", "actions": [],
                               "headers": {}, "send_payload": True, "send_for_all_actions": True, "is_active": True}
        return bid

    @_served
    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str] | None = None) -> int:
        """Idempotent project webhook for ANNOTATION_CREATED / UPDATED / DELETED with the payload; an
        existing webhook to this url is brought to these settings."""
        self._project(project_id, f"list webhooks of project {project_id}")
        wanted = {"url": url, "actions": sorted(WEBHOOK_ACTIONS), "headers": dict(headers or {}),
                  "send_payload": True, "send_for_all_actions": False, "is_active": True}
        for hook in self._webhooks.values():
            if hook["url"] == url and hook["project"] == int(project_id):
                hook.update(copy.deepcopy(wanted))
                return hook["id"]
        hid = self._new_id("webhook")
        self._webhooks[hid] = {"id": hid, "project": int(project_id), **copy.deepcopy(wanted)}
        return hid
