"""Label Studio predictions for tasks: the teacher's stored draft, else one live teacher call for the misses.

`predictions_for` is the ML backend's `/predict` policy, kept here so that the web layer only parses
and answers: a task is found in the ledger by its Label Studio id, else by its `labelloop_key`; the
tasks found nowhere are sent to the teacher in one batch (cached and accounted in the ledger, with no
pool id since they are not pool items). `LazyTeacher` makes the teacher once, on the first miss.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loop import teacher as teacher_mod
from loop.config import Settings
from loop.ledger import Ledger, row_id
from loop.regions import prediction_result
from loop.rounds import parse_task_key
from loop.teacher import Teacher, Template

LiveTeacher = Callable[[], tuple[Teacher, Template]]
"""What `predictions_for` calls, at most once, when some task is a miss: the teacher and its template."""



def prediction(draft: str, score: float | None, model_version: str) -> dict:
    """One Label Studio prediction that pre-fills the editable `response` box with `draft`."""
    return {
        "model_version": model_version,
        "score": float(score) if score is not None else None,
        "result": prediction_result(draft),
    }


class LazyTeacher:
    """The configured teacher and template, made on the first call and reused (so its rate limits hold)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: tuple[Teacher, Template] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> tuple[Teacher, Template]:
        """The teacher and its template; the first call makes them, once even under concurrent calls."""
        with self._lock:
            if self._made is None:
                s = self.settings
                self._made = teacher_mod.from_settings(s), teacher_mod.load_template(s.task, s.teacher.template)
            return self._made


def _data(task: dict) -> dict:
    data = task.get("data")
    return data if isinstance(data, dict) else {}


def stored_item(ledger: Ledger, task: dict) -> dict | None:
    """The batch item a task stands for: by its Label Studio id, else by its `labelloop_key`; or None."""
    task_id = row_id(task.get("id"))
    item = ledger.find_item_by_task(task_id) if task_id is not None else None
    key = _data(task).get("labelloop_key")
    if item is None and isinstance(key, str) and (parsed := parse_task_key(key)):
        round_id, pool_id = parsed
        if row_id(round_id) is not None and row_id(pool_id) is not None:
            item = ledger.find_item(round_id, pool_id)
    return item


def predictions_for(ledger: Ledger, tasks: list[dict], *, live: LiveTeacher) -> list[dict]:
    """One prediction per task, in order: stored drafts from the ledger, misses from one live teacher batch.

    `live` is called only when some task is a miss; a miss with no text gets an empty result.
    """
    results: list[dict] = []
    misses: list[int] = []
    for position, task in enumerate(tasks):
        item = stored_item(ledger, task)
        if item is not None and item.get("draft"):
            version = ledger.find_meta(f"round:{item['round_id']}:model_version", "teacher")
            results.append(prediction(item["draft"], item["score"], version))
        else:
            results.append({})  # filled below
            misses.append(position)
    if misses:
        teacher, template = live()
        version = teacher_mod.provenance(teacher, template)
        asked: list[int] = []
        items: list[dict] = []
        for position in misses:
            data = _data(tasks[position])
            text, reference = data.get("text"), data.get("reference")
            if isinstance(text, str) and text.strip():
                asked.append(position)
                items.append({"text": text, "reference": reference if isinstance(reference, str) else None})
        drafts = teacher_mod.distill_texts(ledger, teacher, template, items) if items else []
        answered = {position: d.text for position, d in zip(asked, drafts, strict=True)}
        for position in misses:
            text = answered.get(position)
            results[position] = prediction(text, None, version) if text else {"model_version": version, "result": []}
    return results
