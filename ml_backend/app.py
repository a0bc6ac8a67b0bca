"""The Label Studio ML backend: serves the teacher's stored outputs as pre-annotations.

Routes are thin (parse, call `loop`, answer). `/predict` is a ledger lookup; the teacher is called
live only for a task the ledger has never seen. `/webhook` records the event and answers at once:
training happens in the scheduler, never inside a request.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request

from loop import teacher as teacher_mod
from loop.config import Settings
from loop.rounds import parse_task_key
from loop.store import Ledger

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024


class BadRequest(Exception):
    """A request the backend cannot use; answered as a 400 with a JSON error."""


def prediction(draft: str, score: float | None, model_version: str) -> dict:
    """One Label Studio prediction that pre-fills the editable `response` box with `draft`."""
    return {
        "model_version": model_version,
        "score": float(score) if score is not None else None,
        "result": [
            {"from_name": "response", "to_name": "source", "type": "textarea", "value": {"text": [draft]}}
        ],
    }


def create_app(settings: Settings, ledger: Ledger | None = None) -> Flask:
    """The Flask app over one project's ledger."""
    app = Flask("labelloop")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    ledger = ledger or Ledger(settings.ledger_path)

    def learner_version() -> str:
        current = ledger.current_model()
        return f"learner-{current['version']}" if current else "learner-v0"

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("expected a JSON object body")
        return data

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(413)
    def _too_big(exc):
        return jsonify({"error": f"request body over {MAX_BODY} bytes"}), 413

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify({"status": "UP", "model_class": "labelloop", "model_version": learner_version()})

    @app.post("/setup")
    def setup():
        body()  # validates; the access_token it may carry is never stored or logged
        return jsonify({"model_version": learner_version()})

    def live_draft(task: dict) -> tuple[str | None, str]:
        """The teacher's output for a task the ledger has never seen (cached in the ledger)."""
        text = (task.get("data") or {}).get("text")
        if not isinstance(text, str) or not text.strip():
            return None, "no-text"
        template = teacher_mod.load_template(settings.task, settings.teacher.template)
        t = teacher_mod.from_settings(settings)
        item = {"pool_id": -1, "text": text, "reference": (task.get("data") or {}).get("reference")}
        _, draft, _ = teacher_mod.distill(ledger, t, template, [item])[-1]
        return draft, f"{t.name}|{template.name}@{template.version}"

    @app.post("/predict")
    def predict():
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("field 'tasks' must be a list of task objects")
        results = []
        for position, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise BadRequest(f"tasks[{position}] must be an object")
            item = None
            if isinstance(task.get("id"), int):
                item = ledger.item_by_task(task["id"])
            key = (task.get("data") or {}).get("labelloop_key") if isinstance(task.get("data"), dict) else None
            if item is None and isinstance(key, str) and parse_task_key(key):
                item = ledger.item_by_key(*parse_task_key(key))
            if item is not None and item.get("draft"):
                version = ledger.get_meta(f"round:{item['round_id']}:model_version", "teacher")
                results.append(prediction(item["draft"], item["score"], version))
                continue
            draft, version = live_draft(task)
            results.append(prediction(draft, None, version) if draft else {"model_version": version, "result": []})
        return jsonify({"results": results})

    @app.post("/webhook")
    def webhook():
        data = body()
        action = data.get("action")
        project = data.get("project")
        project_id = project.get("id") if isinstance(project, dict) else project
        task = data.get("task")
        annotation = data.get("annotation")
        ledger.record_event(
            str(action) if action is not None else None,
            project_id if isinstance(project_id, int) else None,
            task.get("id") if isinstance(task, dict) and isinstance(task.get("id"), int) else None,
            annotation.get("id") if isinstance(annotation, dict) and isinstance(annotation.get("id"), int) else None,
        )
        return jsonify({"status": "recorded"}), 201

    return app
