"""Everything that talks to Label Studio (label-studio 1.23.x through label-studio-sdk 2.1.x).

This is the only module of the project that imports label_studio_sdk. It covers project setup, the
idempotent bulk import of a batch with its pre-annotations (predictions), reading the annotators'
verdicts back, simulated annotations, the ML-backend connection and the webhook.

What it reads is complete or it fails: task listings page by id until the server reports nothing left
(never stopping at a short page), and an annotation missing from a listing is only taken for gone once
Label Studio confirms it (`gone_annotations`: GET answers 404, or it is a skip or invalid now). An
annotation with no response text that is no reject is invalid and never read as a verdict.

Task data at import: ``{"text", "draft", "labelloop_key", **meta}``; the prediction pre-fills the
``response`` TextArea with the draft. An annotation carries the final ``response`` text, a ``verdict``
choice (accept / edit / reject) and an optional ``comment`` (see label_config/*.xml).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface

from loop.errors import ImportOutcomeUnknown, StudioError  # noqa: F401 (re-exported: callers catch them here too)
from loop.regions import (  # noqa: F401 (re-exported: the label config's names belong with this client)
    FROM_COMMENT,
    FROM_RESPONSE,
    FROM_VERDICT,
    TO_NAME,
    annotation_result,
    prediction_result,
    region_id,
)
from loop.vocab import VERDICTS

log = logging.getLogger(__name__)

KEY_FIELD = "labelloop_key"
RESERVED_DATA_FIELDS = ("text", "draft", KEY_FIELD)
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")

PAGE_SIZE = 1000
IMPORT_TIMEOUT_S = 600.0  # 10,000 tasks import in about 8 s; leave room for big batches
NO_RETRY = {"max_retries": 0}  # writes that must not be repeated blindly (import, annotation)


_ANNOTATION_INCLUDE = "id,data,annotations,result,completed_by,was_cancelled,created_at,updated_at,lead_time"


class _SlimListingIncomplete(Exception):
    pass


@dataclass(frozen=True)
class TaskCopy:
    """One task carrying a given labelloop_key: duplicates of a key are told apart by what they hold."""

    task_id: int
    predictions: int
    annotations: int  # skips included: a task someone worked on is never deleted


@dataclass(frozen=True)
class Annotation:
    annotation_id: int
    task_id: int
    key: str
    verdict: str  # "accept" | "edit" | "reject"
    text: str
    draft: str
    comment: str | None
    annotator: str | None
    updated_at: str
    lead_time: float | None = None  # seconds the annotator spent in the editor, as Label Studio measured
    created_at: str | None = None


@dataclass(frozen=True)
class Skip:
    """A skipped task: Label Studio's cancelled annotation (the Skip button), by whom and when."""

    annotation_id: int
    task_id: int
    key: str
    annotator: str | None
    created_at: str | None
    updated_at: str | None


def _stamp(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else value.isoformat()


def _norm(s: str | None) -> str:
    return " ".join((s or "").split())


def parse_verdict(choice: str | None, text: str, draft: str) -> str:
    """reject if the annotator chose reject; edit if the final text differs from the draft
    (whitespace-normalised) whatever was chosen; else accept."""
    if (choice or "").strip().lower() == "reject":
        return "reject"
    if _norm(text) != _norm(draft):
        return "edit"
    return "accept"


def _regions(result: list[dict]) -> tuple[str | None, str | None, str | None]:
    """(response text, verdict choice, comment) of an annotation's result; None where a region is absent."""
    text: str | None = None
    choice: str | None = None
    comment: str | None = None
    for item in result:
        name = item.get("from_name")
        if name == FROM_RESPONSE and item.get("type") == "textarea":
            text = _textarea_text(item)
        elif name == FROM_VERDICT:
            choices = (item.get("value") or {}).get("choices") or []
            choice = str(choices[0]) if choices else None
        elif name == FROM_COMMENT:
            comment = _textarea_text(item).strip() or None
    return text, choice, comment


def missing_response(result: list[dict]) -> bool:
    """True when an annotation is no verdict on a text: its response is absent or blank and it is no
    reject. Such an annotation is invalid, never an accept of a draft the annotator may not have seen
    (a task imported without its prediction shows an empty box)."""
    text, choice, _ = _regions(result)
    return (choice or "").strip().lower() != "reject" and not (text or "").strip()


def split_copies(copies: list[TaskCopy]) -> tuple[TaskCopy, list[TaskCopy]]:
    """(the copy to keep, the copies to delete) among the tasks of one key: keep one someone worked on,
    else one with a prediction, else the oldest; delete the others unless someone worked on them."""
    kept = max(copies, key=lambda c: (c.annotations > 0, c.predictions > 0, -c.task_id))
    return kept, [c for c in copies if c is not kept and c.annotations == 0]


def resolve_copies(copies: dict[str, list[TaskCopy]], wanted: set[str]) -> tuple[dict[str, int], list[int], set[str]]:
    """For the tasks of a project by key: (key -> the task to use, the duplicate tasks of the `wanted`
    keys to delete, the `wanted` keys whose task has no prediction). Shared by Studio and MemStudio."""
    use: dict[str, int] = {}
    delete: list[int] = []
    bare: set[str] = set()
    for key, found in copies.items():
        kept, extra = split_copies(found)
        use[key] = kept.task_id
        if key in wanted:
            delete += [c.task_id for c in extra]
            if kept.predictions == 0:
                bare.add(key)
    return use, sorted(delete), bare


def repair_payloads(items: list[dict], task_ids: dict[str, int], keys: set[str],
                    model_version: str) -> tuple[list[dict], list[int]]:
    """(payloads, task ids) of the items whose key is in `keys`, each key once: the predictions to
    re-attach to tasks found without one."""
    payloads: list[dict] = []
    ids: list[int] = []
    for i, item in enumerate(items):
        key = str(item["key"])
        if key in keys and task_ids[key] not in ids:
            payloads.append(Studio._task_payload(item, model_version, where=f"items[{i}] (key {key!r})"))
            ids.append(task_ids[key])
    return payloads, ids


def _detail(body: Any, limit: int = 500) -> str:
    if isinstance(body, dict):
        parts = []
        for k in ("detail", "validation_errors", "message", "non_field_errors"):
            if body.get(k):
                parts.append(f"{k}: {body[k]}")
        text = "; ".join(parts) if parts else json.dumps(body, default=str)
    else:
        text = str(body) if body is not None else ""
    return text if len(text) <= limit else text[:limit] + "..."


@contextmanager
def _calling(what: str) -> Iterator[None]:
    try:
        yield
    except ApiError as exc:
        raise StudioError(what, exc.status_code, _detail(exc.body)) from None
    except httpx.HTTPError as exc:
        raise StudioError(what, None, f"{type(exc).__name__}: {exc}") from None


def _plain(value: Any, where: str) -> Any:
    """JSON-safe copy of task metadata (numpy scalars and arrays included)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite number {value!r}")
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar / array
        return _plain(value.tolist(), where)
    raise ValueError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable")


def _textarea_text(item: dict) -> str:
    texts = (item.get("value") or {}).get("text") or []
    if isinstance(texts, str):
        return texts
    return "\n".join(str(t) for t in texts)


def new_task_payloads(items: list[dict], existing: dict[str, int], model_version: str) -> list[dict]:
    """Validated task payloads (data + prediction) for the items whose key is not in `existing`, each key
    once: the part of an import that decides what is new."""
    new: list[dict] = []
    pending: set[str] = set()
    for i, item in enumerate(items):
        key = str(item["key"])
        if key in existing or key in pending:
            continue
        pending.add(key)
        new.append(Studio._task_payload(item, model_version, where=f"items[{i}] (key {key!r})"))
    return new


def check_label_config(label_config: str) -> None:
    """Raise ValueError unless the config has what labelloop reads and writes: a ``source`` object, a
    ``response`` TextArea a prediction can fill, and a ``verdict`` Choices with accept / edit / reject."""
    try:
        li = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises assorted parser errors
        raise ValueError(f"label config does not parse: {exc}") from None
    objects = {o.name for o in li.objects}
    controls = {c.name: c for c in li.controls}
    if TO_NAME not in objects:
        raise ValueError(f"label config lacks the object tag named {TO_NAME!r}")
    for name in (FROM_RESPONSE, FROM_VERDICT):
        if name not in controls:
            raise ValueError(f"label config lacks the control tag named {name!r}")
    labels = set(getattr(controls[FROM_VERDICT], "labels", None) or [])
    if not set(VERDICTS) <= labels:
        raise ValueError(f"the {FROM_VERDICT!r} choices must include {list(VERDICTS)}, found {sorted(labels)}")
    errors = li.validate_prediction({"result": prediction_result("draft")}, return_errors=True)
    if errors:
        raise ValueError(f"a draft prediction does not fit the label config: {errors}")


def _id_range_query(task_ids) -> dict:
    """A task filter on the id range min..max: a list of 10,000 ids would not fit in the request line."""
    return {
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:id",
                    "operator": "in",
                    "type": "Number",
                    "value": {"min": min(task_ids), "max": max(task_ids)},
                }
            ],
        }
    }


class Studio:
    """A thin client over label-studio-sdk for one Label Studio server.

    api_key may be a legacy token or a personal access token (a JWT refresh token; the SDK exchanges
    it for short-lived access tokens itself). base_url is always passed explicitly: the SDK reads
    LABEL_STUDIO_API_KEY at import time and defaults to localhost:8000 otherwise."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0):
        if not url or not api_key:
            raise StudioError("connect", None, "a Label Studio url and api key are required")
        self.url = url.rstrip("/")
        with _calling("connect (api key check)"):
            self._ls = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self._users: dict[int, str] | None = None
        self._invalid_warned: set[int] = set()  # invalid annotations already reported (full syncs repeat)

    def __repr__(self) -> str:
        return f"Studio(url={self.url!r})"

    # ------------------------------------------------------------------ projects

    def ensure_project(self, title: str, label_config: str, project_id: int | None = None) -> int:
        """Reuse project_id if it exists, else a project with this exact title, else create it."""
        if project_id is not None:
            try:
                with _calling(f"get project {project_id}"):
                    project = self._ls.projects.get(id=project_id)
                self._warn_if_config_differs(project, label_config)
                return int(project.id)
            except StudioError as exc:
                if exc.status != 404:
                    raise
                log.warning("project %s not found; looking for a project titled %r", project_id, title)
        for project in self._projects_titled(title):
            self._warn_if_config_differs(project, label_config)
            return int(project.id)
        with _calling(f"create project {title!r}"):
            project = self._ls.projects.create(
                title=title,
                label_config=label_config,
                show_collab_predictions=True,  # the draft is in the editable box when the task opens
            )
        log.info("created Label Studio project %s (%r)", project.id, title)
        return int(project.id)

    def _projects_titled(self, title: str) -> list[Any]:
        found = []
        page = 1
        while True:
            with _calling(f"list projects titled {title!r}"):
                pager = self._ls.projects.list(title=title, page=page, page_size=100, ordering="id")
            items = pager.items or []
            found.extend(p for p in items if p.title == title)
            total = getattr(pager.response, "count", None)
            if not items or total is None or page * 100 >= total:
                return found
            page += 1

    @staticmethod
    def _warn_if_config_differs(project: Any, label_config: str) -> None:
        current = getattr(project, "label_config", None)
        if current is not None and _norm(current) != _norm(label_config):
            log.warning(
                "project %s has a different label config than the one given; keeping the project's",
                project.id,
            )

    def counts(self, project_id: int) -> dict:
        """Project counters: task_number, finished_task_number, num_tasks_with_annotations,
        total_annotations_number, skipped_annotations_number, total_predictions_number."""
        with _calling(f"get project {project_id} counters"):
            project = self._ls.projects.get(id=project_id)
        fields = (
            "task_number",
            "finished_task_number",
            "num_tasks_with_annotations",
            "total_annotations_number",
            "skipped_annotations_number",
            "total_predictions_number",
        )
        return {f: int(getattr(project, f, None) or 0) for f in fields}

    def set_overlap(self, project_id: int, annotations: int) -> None:
        """Make every task of the project want `annotations` people (Label Studio's maximum_annotations,
        applied to all tasks: overlap_cohort_percentage 100); a no-op when it already does."""
        with _calling(f"get project {project_id}"):
            project = self._ls.projects.get(id=project_id)
        if (project.maximum_annotations, project.overlap_cohort_percentage) == (annotations, 100):
            return
        with _calling(f"set overlap {annotations} on project {project_id}"):
            self._ls.projects.update(id=project_id, maximum_annotations=annotations, overlap_cohort_percentage=100)
        log.info("project %s: each task now wants %d annotations", project_id, annotations)

    # ------------------------------------------------------------------ tasks

    def _iter_tasks(self, project_id: int, what: str, *, query: dict | None = None, **kw) -> Iterator[Any]:
        """All tasks of a project matching `query`, in id order, read in slices "id > the last id read"
        until the server reports none left: a short page ends nothing (a server whose
        TASK_API_PAGE_SIZE_MAX is below PAGE_SIZE serves short pages), and a task deleted meanwhile
        shifts no later one past the reader (page numbers would). Tasks added meanwhile are read too."""
        base = dict(query or {})
        filters = dict(base.get("filters") or {"conjunction": "and", "items": []})
        if filters.get("items") and filters.get("conjunction", "and") != "and":
            raise ValueError("task listings page by id: only filters joined by 'and' can be combined with that")
        last = 0
        while True:
            after = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last}
            q = {**base, "filters": {"conjunction": "and", "items": [*filters.get("items", []), after]},
                 "ordering": ["tasks:id"]}
            with _calling(f"{what} (project {project_id}, tasks after id {last})"):
                pager = self._ls.tasks.list(project=project_id, page=1, page_size=PAGE_SIZE, query=json.dumps(q), **kw)
            items = pager.items or []
            yield from items
            total = getattr(pager.response, "total", None)  # what is left from `last` on, this page included
            if not items or (total is not None and len(items) >= total):
                return
            newest = max(int(t.id) for t in items)
            if newest <= last:
                raise StudioError(f"{what} (project {project_id})", None, "the server ignored the task id filter")
            last = newest

    def _key_copies(self, project_id: int, wanted: set[str] | None = None) -> dict[str, list[TaskCopy]]:
        """The keyed tasks of a project by key, with what each holds (duplicates of a key included). With
        `wanted`, at least every task of those keys: only tasks whose key contains the keys' common prefix
        are read (Label Studio filters them in its database), so that importing round 5's batch does not
        read every task of rounds 1 to 4 first (10,000 tasks take longer to read than to import)."""
        copies: dict[str, list[TaskCopy]] = {}
        include = "id,data,total_predictions,total_annotations,cancelled_annotations"
        prefix = os.path.commonprefix([min(wanted), max(wanted)]) if wanted else ""
        # "contains", case-insensitive, reads a superset of the prefix's tasks: all this needs
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{KEY_FIELD}", "operator": "contains", "type": "String", "value": prefix}
        ]}} if prefix else None
        for task in self._iter_tasks(project_id, "list task keys", query=query, fields="task_only", include=include):
            key = (task.data or {}).get(KEY_FIELD)
            if key is not None:
                worked = int(getattr(task, "total_annotations", 0) or 0) + int(
                    getattr(task, "cancelled_annotations", 0) or 0)
                copies.setdefault(str(key), []).append(
                    TaskCopy(int(task.id), int(getattr(task, "total_predictions", 0) or 0), worked))
        return copies

    def existing_keys(self, project_id: int) -> dict[str, int]:
        """labelloop_key -> task id for every task in the project (idempotent import); where a key has
        several tasks, the one `import_batch` keeps."""
        return resolve_copies(self._key_copies(project_id), set())[0]

    def _resolve_keys(self, project_id: int, wanted: set[str]) -> tuple[dict[str, int], set[str]]:
        """key -> task id in the project, after deleting the duplicate tasks of the `wanted` keys; and the
        wanted keys whose task has no prediction."""
        use, delete, bare = resolve_copies(self._key_copies(project_id, wanted), wanted)
        if delete:
            log.warning("project %s holds %d duplicate tasks of keys being imported (an import committed twice);"
                        " deleting them: %s", project_id, len(delete), delete[:20])
        for task_id in delete:
            try:
                with _calling(f"delete duplicate task {task_id} of project {project_id}"):
                    self._ls.tasks.delete(id=str(task_id))
            except StudioError as exc:
                if exc.status != 404:  # gone already is what was wanted
                    raise
        return use, bare

    def import_batch(self, project_id: int, items: list[dict], model_version: str) -> dict[str, int]:
        """Import the items whose key is not in the project yet, in one bulk call, each with its draft
        as a prediction (score = the item's score), and leave every item with exactly one task that has
        a prediction. Returns key -> task id for ALL items, old and new.

        Before importing, duplicate tasks of a key (an import committed twice) are deleted, keeping the
        one someone worked on, else the one with a prediction, else the oldest. After it, the counts of
        the answer are checked, and predictions are re-attached wherever a task has none: the server
        retries an import that met a SQLite lock WITHOUT its predictions and still answers 201, and a
        crash or failure before that repair leaves keyed tasks without drafts for the next call to
        find. An import whose answer never came raises ImportOutcomeUnknown.

        items: {"key": str, "text": str, "draft": str, "score": float, "meta": dict}."""
        existing, bare = self._resolve_keys(project_id, {str(item["key"]) for item in items})
        new = new_task_payloads(items, existing, model_version)
        payloads, repair = repair_payloads(items, existing, bare, model_version)
        if bare:
            log.warning("%d tasks of these items in project %s have no prediction (an earlier import's repair"
                        " never ran); re-attaching them", len(bare), project_id)

        if new:
            what = f"import {len(new)} tasks into project {project_id}"
            try:
                with _calling(what):
                    resp = self._ls.projects.import_tasks(
                        id=project_id,
                        request=new,
                        return_task_ids=True,
                        commit_to_project=True,
                        request_options={**NO_RETRY, "timeout": IMPORT_TIMEOUT_S},
                    )
            except StudioError as exc:
                if exc.status is None or exc.status >= 500:
                    raise ImportOutcomeUnknown(what, exc.status, exc.detail) from None
                raise
            task_ids = list(resp.task_ids or [])
            if resp.task_count != len(new) or len(task_ids) != len(new):
                raise StudioError(
                    f"import {len(new)} tasks into project {project_id}",
                    201,
                    f"server reports {resp.task_count} tasks and {len(task_ids)} task ids",
                )
            for payload, task_id in zip(new, task_ids, strict=True):
                existing[payload["data"][KEY_FIELD]] = int(task_id)
            if (resp.prediction_count or 0) != len(new):
                log.warning(
                    "import into project %s kept %s of %d predictions; re-attaching the missing ones",
                    project_id,
                    resp.prediction_count,
                    len(new),
                )
                payloads += new
                repair += [int(t) for t in task_ids]
            log.info("imported %d new tasks into project %s", len(new), project_id)
        if repair:
            self._reattach_predictions(project_id, payloads, repair)
        return {str(item["key"]): existing[str(item["key"])] for item in items}

    @staticmethod
    def _task_payload(item: dict, model_version: str, where: str) -> dict:
        meta = _plain(dict(item.get("meta") or {}), f"{where}.meta")
        clash = [k for k in RESERVED_DATA_FIELDS if k in meta]
        if clash:
            raise ValueError(f"{where}: meta may not contain the reserved fields {clash}")
        score = float(item["score"])
        if not math.isfinite(score):
            raise ValueError(f"{where}: non-finite score {item['score']!r}")
        text, draft = str(item["text"]), str(item["draft"])
        return {
            "data": {"text": text, "draft": draft, KEY_FIELD: str(item["key"]), **meta},
            "predictions": [{"model_version": model_version, "score": score, "result": prediction_result(draft)}],
        }

    def _tasks_without_predictions(self, project_id: int, task_ids: list[int]) -> set[int]:
        query = _id_range_query(task_ids)
        missing = {int(t) for t in task_ids}
        for task in self._iter_tasks(
            project_id, "check predictions", query=query, fields="task_only", include="id,total_predictions"
        ):
            if (task.total_predictions or 0) > 0:
                missing.discard(int(task.id))
        return missing

    def _reattach_predictions(self, project_id: int, payloads: list[dict], task_ids: list[int]) -> None:
        """Add each payload's prediction to its task where the task has none (idempotent); raise unless
        every task has one afterwards."""
        missing = self._tasks_without_predictions(project_id, task_ids)
        if not missing:
            return
        request = [
            {"task": int(tid), **payload["predictions"][0]}
            for payload, tid in zip(payloads, task_ids, strict=True)
            if int(tid) in missing
        ]
        with _calling(f"re-attach {len(request)} predictions in project {project_id}"):
            self._ls.projects.import_predictions(
                id=project_id, request=request, request_options={**NO_RETRY, "timeout": IMPORT_TIMEOUT_S}
            )
        still = self._tasks_without_predictions(project_id, sorted(missing))
        if still:
            raise StudioError(
                f"re-attach predictions in project {project_id}",
                201,
                f"{len(still)} tasks still have no prediction (e.g. task {min(still)})",
            )

    # ------------------------------------------------------------------ annotations

    def _annotator_names(self) -> dict[int, str]:
        if self._users is None:
            with _calling("list users"):
                users = self._ls.users.list()
            self._users = {int(u.id): (u.email or u.username or str(u.id)) for u in users if u.id is not None}
        return self._users

    def _annotator(self, ann: dict) -> str | None:
        uid = ann.get("completed_by")
        if isinstance(uid, dict):  # some serializers expand the user
            return uid.get("email") or (str(uid["id"]) if uid.get("id") is not None else None)
        if uid is None:
            return None
        names = self._annotator_names()
        if int(uid) not in names:
            self._users = None  # a user added since the last look
            names = self._annotator_names()
        return names.get(int(uid), str(uid))

    def completed_annotations(self, project_id: int) -> list[Annotation]:
        """Every non-cancelled (not skipped) annotation of the tasks carrying a labelloop_key, parsed.
        draft = the task's data draft."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:total_annotations",
                        "operator": "greater",
                        "type": "Number",
                        "value": 0,
                    }
                ],
            }
        }
        # `include` trims the payload to what is read here: 1,000 annotated tasks list in about 1 s instead
        # of 3.4 s (the easy export is as fast but writes a file into LS's data dir on every call). LS
        # applies `include` to the nested annotations too, hence their fields in the list. Should a
        # version stop returning them, the full listing is used instead.
        try:
            return self._read_annotations(project_id, query, include=_ANNOTATION_INCLUDE)
        except _SlimListingIncomplete:
            log.warning("trimmed task listing lacks annotation results; reading full tasks")
            return self._read_annotations(project_id, query, include=None)

    def annotations_for_tasks(self, project_id: int, task_ids: list[int]) -> list[Annotation]:
        """Like `completed_annotations`, for the given tasks only: the targeted sync a webhook asks for."""
        if not task_ids:
            return []
        wanted = {int(t) for t in task_ids}
        query = _id_range_query(wanted)  # a range: filtered to `wanted` below
        try:
            found = self._read_annotations(project_id, query, include=_ANNOTATION_INCLUDE)
        except _SlimListingIncomplete:
            found = self._read_annotations(project_id, query, include=None)
        return [a for a in found if a.task_id in wanted]

    def _read_annotations(self, project_id: int, query: dict, include: str | None) -> list[Annotation]:
        out: list[Annotation] = []
        kw = {"include": include} if include else {}
        for task in self._iter_tasks(project_id, "list annotated tasks", query=query, fields="all", **kw):
            data = task.data or {}
            key = data.get(KEY_FIELD)
            if key is None:
                continue
            draft = str(data.get("draft") or "")
            for ann in task.annotations or []:
                if not isinstance(ann, dict):
                    ann = ann.model_dump() if hasattr(ann, "model_dump") else dict(ann)
                if include and "result" not in ann:
                    raise _SlimListingIncomplete
                if ann.get("was_cancelled"):
                    continue
                parsed = self._parse_annotation(ann, int(task.id), str(key), draft)
                if parsed is not None:
                    out.append(parsed)
        out.sort(key=lambda a: a.annotation_id)
        return out

    def _parse_annotation(self, ann: dict, task_id: int, key: str, draft: str) -> Annotation | None:
        """The verification an annotation holds, or None (with a warning, once per annotation) when its
        response is missing or blank and it is no reject: an invalid annotation, never an accept."""
        result = ann.get("result") or []
        if missing_response(result):
            if int(ann["id"]) not in self._invalid_warned:
                self._invalid_warned.add(int(ann["id"]))
                log.warning("annotation %s of task %s (%s) has no response text and is no reject: not a verification"
                            " (did the task show its draft?)", ann["id"], task_id, key)
            return None
        text, choice, comment = _regions(result)
        final = draft if text is None else text
        updated = ann.get("updated_at") or ann.get("created_at") or ""
        created = ann.get("created_at")
        lead = ann.get("lead_time")
        return Annotation(
            annotation_id=int(ann["id"]),
            task_id=task_id,
            key=key,
            verdict=parse_verdict(choice, final, draft),
            text=final,
            draft=draft,
            comment=comment,
            annotator=self._annotator(ann),
            updated_at=updated if isinstance(updated, str) else updated.isoformat(),
            lead_time=float(lead) if isinstance(lead, (int, float)) else None,
            created_at=created if isinstance(created, str) or created is None else created.isoformat(),
        )

    def skipped_annotations(self, project_id: int, task_ids: list[int] | None = None) -> list[Skip]:
        """Every skip (cancelled annotation) of the tasks carrying a labelloop_key, or of the given tasks
        only, by annotation id. Label Studio's `total_annotations` leaves skips out, so these tasks are
        read with a filter of their own (`cancelled_annotations > 0`)."""
        items = [{"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number",
                  "value": 0}]
        wanted = None
        if task_ids is not None:
            if not task_ids:
                return []
            wanted = {int(t) for t in task_ids}
            items += _id_range_query(wanted)["filters"]["items"]
        query = {"filters": {"conjunction": "and", "items": items}}
        out: list[Skip] = []
        for task in self._iter_tasks(project_id, "list skipped tasks", query=query, fields="all",
                                     include=_ANNOTATION_INCLUDE):
            key = (task.data or {}).get(KEY_FIELD)
            if key is None or (wanted is not None and int(task.id) not in wanted):
                continue
            for ann in task.annotations or []:
                if not isinstance(ann, dict):
                    ann = ann.model_dump() if hasattr(ann, "model_dump") else dict(ann)
                if ann.get("was_cancelled"):
                    out.append(Skip(int(ann["id"]), int(task.id), str(key), self._annotator(ann),
                                    _stamp(ann.get("created_at")), _stamp(ann.get("updated_at"))))
        out.sort(key=lambda k: k.annotation_id)
        return out

    def gone_skips(self, annotation_ids: list[int]) -> set[int]:
        """The skips among these that Label Studio confirms are no skip any more: deleted (404) or
        re-submitted as a verdict."""
        return self._gone(annotation_ids, lambda body: not body.get("was_cancelled"))

    def gone_annotations(self, annotation_ids: list[int]) -> set[int]:
        """The annotations among these that Label Studio confirms hold no verification any more: deleted
        (GET answers 404, as it does once their task or project is deleted), now a skip, or left without
        a response. A listing that misses an annotation is only a reason to ask: it may be incomplete."""
        return self._gone(annotation_ids,
                          lambda body: body.get("was_cancelled") or missing_response(body.get("result") or []))

    def _gone(self, annotation_ids: list[int], changed: Callable[[dict], bool]) -> set[int]:
        """Ask Label Studio for each annotation: gone when it answers 404 or when `changed` holds for
        what it answers; any other error is raised (not confirmed: the next sync asks again)."""
        gone: set[int] = set()
        for annotation_id in sorted({int(a) for a in annotation_ids}):
            try:
                with _calling(f"get annotation {annotation_id}"):
                    ann = self._ls.annotations.get(id=annotation_id)
            except StudioError as exc:
                if exc.status != 404:
                    raise
                gone.add(annotation_id)
                continue
            if changed(ann if isinstance(ann, dict) else ann.model_dump()):
                gone.add(annotation_id)
        return gone

    def export_annotations(self, project_id: int) -> list[dict]:
        """Every non-cancelled annotation of the project's annotated tasks, with the task's data and the
        model_version and score of its latest prediction: what `labelloop export --from-studio` reads
        (for teams that verified without the scheduler). Tasks without a labelloop_key are included."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}}
        out: list[dict] = []
        for task in self._iter_tasks(project_id, "export annotated tasks", query=query, fields="all"):
            data = dict(task.data or {})
            predictions = [p if isinstance(p, dict) else p.model_dump() for p in (task.predictions or [])]
            predictions = [p for p in predictions if isinstance(p, dict)]
            latest = max(predictions, key=lambda p: int(p.get("id") or 0), default={})
            for ann in task.annotations or []:
                if not isinstance(ann, dict):
                    ann = ann.model_dump() if hasattr(ann, "model_dump") else dict(ann)
                if ann.get("was_cancelled"):
                    continue
                parsed = self._parse_annotation(ann, int(task.id), str(data.get(KEY_FIELD) or ""),
                                                str(data.get("draft") or ""))
                if parsed is None:
                    continue
                out.append({"annotation": parsed, "data": data, "model_version": latest.get("model_version"),
                            "score": latest.get("score")})
        out.sort(key=lambda r: r["annotation"].annotation_id)
        return out

    def annotate(self, task_id: int, *, verdict: str, text: str, comment: str | None = None,
                 user_id: int | None = None) -> int:
        """Create an annotation the way the UI would (the response region started from the task's
        latest prediction, a verdict choice, an optional comment), as `user_id` (default: the key's
        owner); used by simulated annotators."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        with _calling(f"get task {task_id}"):
            task = self._ls.tasks.get(id=str(task_id))
        predictions = [p if isinstance(p, dict) else p.model_dump() for p in (task.predictions or [])]
        parent = max((int(p["id"]) for p in predictions if p.get("id") is not None), default=None)
        result = annotation_result(verdict, text, comment, from_prediction=parent is not None)
        kwargs: dict[str, Any] = {"result": result, "lead_time": 1.0}
        if user_id is not None:
            kwargs["completed_by"] = int(user_id)
        if parent is not None:
            kwargs["parent_prediction"] = parent
        with _calling(f"annotate task {task_id}"):
            ann = self._ls.annotations.create(id=task_id, request_options=NO_RETRY, **kwargs)
        return int(ann.id)

    def ensure_user(self, email: str) -> int:
        """The id of the user with this email, created (without a password) if there is none: simulated
        annotators and tests act as several people."""
        with _calling("list users"):
            for user in self._ls.users.list():
                if (user.email or "").lower() == email.lower():
                    return int(user.id)
        with _calling(f"create user {email}"):
            user = self._ls.users.create(email=email, username=email.split("@")[0])
        self._users = None
        return int(user.id)

    def skip(self, task_id: int, *, user_id: int | None = None) -> int:
        """Skip a task as the labeling stream's Skip button does (a cancelled annotation with no result),
        as `user_id` (default: the key's owner); used by simulated annotators and tests."""
        kwargs: dict[str, Any] = {"result": [], "was_cancelled": True}
        if user_id is not None:
            kwargs["completed_by"] = int(user_id)
        with _calling(f"skip task {task_id}"):
            ann = self._ls.annotations.create(id=task_id, request_options=NO_RETRY, **kwargs)
        return int(ann.id)

    # ------------------------------------------------------------------ ML backend and webhook

    def connect_backend(
        self, project_id: int, url: str, title: str = "labelloop", basic_auth: tuple[str, str] | None = None
    ) -> int:
        """Idempotent: reuse an ML backend with this url on the project (updating its credentials), else
        create it. Label Studio calls the backend's /health and /setup while connecting, so it must be
        running already; it also adds a webhook to <url>/webhook for all actions by itself."""
        want = url.rstrip("/")
        auth: dict[str, Any] = {"auth_method": "NONE"}
        if basic_auth is not None:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
        with _calling(f"list ML backends of project {project_id}"):
            backends = self._ls.ml.list(project=project_id)
        for backend in backends:
            if backend.url.rstrip("/") == want and int(backend.project) == int(project_id):
                if basic_auth is not None or getattr(backend, "auth_method", "NONE") != "NONE":
                    with _calling(f"update ML backend {backend.id} credentials"):
                        self._ls.ml.update(id=int(backend.id), request_options=NO_RETRY, **auth)
                return int(backend.id)
        with _calling(f"connect ML backend {want} to project {project_id} (it must answer /health and /setup)"):
            backend = self._ls.ml.create(
                project=project_id, url=want, title=title, is_interactive=False, request_options=NO_RETRY, **auth
            )
        log.info("connected ML backend %s (id %s) to project %s", want, backend.id, project_id)
        return int(backend.id)

    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str] | None = None) -> int:
        """Idempotent project webhook for ANNOTATION_CREATED / UPDATED / DELETED with the payload. An
        existing webhook to this url (e.g. the one Label Studio adds when a backend is connected) is
        brought to these settings."""
        want_headers = dict(headers or {})
        want_actions = sorted(WEBHOOK_ACTIONS)
        wanted = {"url": url, "actions": want_actions, "headers": want_headers, "send_payload": True,
                  "send_for_all_actions": False, "is_active": True}
        with _calling(f"list webhooks of project {project_id}"):
            hooks = self._ls.webhooks.list(project=str(project_id))
        for hook in hooks:
            if hook.url != url or hook.project is None or int(hook.project) != int(project_id):
                continue
            same = (
                sorted(hook.actions or []) == want_actions
                and (hook.headers or {}) == want_headers
                and bool(hook.send_payload)
                and bool(hook.is_active)
                and not hook.send_for_all_actions
            )
            if not same:
                with _calling(f"update webhook {hook.id} of project {project_id}"):
                    self._ls.webhooks.update(id=int(hook.id), **wanted)
            return int(hook.id)
        with _calling(f"create webhook for project {project_id}"):
            hook = self._ls.webhooks.create(project=project_id, **wanted)
        return int(hook.id)
