"""The Label Studio ML backend: serves the teacher's stored outputs as pre-annotations.

Routes are thin (parse, call `loop`, answer). `/predict` is a ledger lookup; the teacher is called
live only for a task the ledger has never seen. `/webhook` records the event and answers at once:
training happens in the scheduler, never inside a request. Every error is a JSON body with a 4xx
status (bad input) or a bare 500 (a fault of ours, logged without request data); optional basic
auth and a webhook shared secret come from the environment.
"""

from __future__ import annotations

import functools
import hmac
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from loop import teacher as teacher_mod
from loop.config import WEBHOOK_SECRET_HEADER, Settings
from loop.ledger import Ledger
from loop.rounds import parse_task_key
from ml_backend import dashboard
from ml_backend.openapi import OPENAPI

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
MAX_TASKS = 1000
OPEN_ROUTES = {"/health", "/", "/openapi.json"}  # no secrets there; container health checks need them


class BadRequest(Exception):
    """A request the backend cannot use; answered as a 400 with a JSON error naming the field."""


def prediction(draft: str, score: float | None, model_version: str) -> dict:
    """One Label Studio prediction that pre-fills the editable `response` box with `draft`."""
    return {
        "model_version": model_version,
        "score": float(score) if score is not None else None,
        "result": [
            {"from_name": "response", "to_name": "source", "type": "textarea", "value": {"text": [draft]}}
        ],
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _id_of(value: Any) -> int | None:
    """An id given either as a number or as an object with an `id` (Label Studio sends both)."""
    return _id_of(value.get("id")) if isinstance(value, dict) else _int_or_none(value)


def create_app(settings: Settings, ledger: Ledger | None = None) -> Flask:
    """The Flask app over one project's ledger."""
    app = Flask("labelloop")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    ledger = ledger or Ledger(settings.ledger_path)
    auth = settings.backend_auth
    webhook_secret = settings.webhook_secret

    def learner_version() -> str:
        current = ledger.find_current_model()
        return f"learner-{current['version']}" if current else "learner-v0"

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("expected a JSON object body (Content-Type: application/json)")
        return data

    @app.before_request
    def _authenticate():
        if auth is None or request.path in OPEN_ROUTES:
            return None
        given = request.authorization
        user, password = auth
        ok = (
            given is not None
            and given.type == "basic"
            and hmac.compare_digest((given.username or "").encode(), user.encode())
            and hmac.compare_digest((given.password or "").encode(), password.get_secret_value().encode())
        )
        if not ok:
            reply = jsonify({"error": "authentication required (basic auth)"})
            reply.status_code = 401
            reply.headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
            return reply
        return None

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return jsonify({"error": exc.description or exc.name}), exc.code

    @app.errorhandler(Exception)
    def _fault(exc: Exception):
        # never echo the request or the exception text: either may carry a token
        log.error("%s %s failed: %s", request.method, request.path, type(exc).__name__)
        return jsonify({"error": "internal error; see the backend log"}), 500

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify({"status": "UP", "model_class": "labelloop", "model_version": learner_version()})

    @app.get("/openapi.json")
    def openapi():
        return jsonify(OPENAPI)

    @app.post("/setup")
    def setup():
        body()  # validates; the access_token it may carry is never stored or logged
        return jsonify({"model_version": learner_version()})

    @functools.cache
    def live_teacher() -> tuple[teacher_mod.Teacher, teacher_mod.Template]:
        """One teacher per app (so its rate limits hold across requests), made on the first miss."""
        return teacher_mod.from_settings(settings), teacher_mod.load_template(settings.task, settings.teacher.template)

    def live_drafts(tasks: dict[int, dict]) -> tuple[dict[int, str | None], str]:
        """The teacher's outputs for tasks the ledger has never seen, asked in one batch (and cached)."""
        items = []
        for position, task in tasks.items():
            data = task.get("data") if isinstance(task.get("data"), dict) else {}
            text, reference = data.get("text"), data.get("reference")
            if isinstance(text, str) and text.strip():
                items.append({"pool_id": position, "text": text,
                              "reference": reference if isinstance(reference, str) else None})
        t, template = live_teacher()
        drafts = {pid: draft for pid, (_, draft, _) in teacher_mod.distill(ledger, t, template, items).items()}
        return drafts, f"{t.name}|{template.name}@{template.version}"

    def stored_item(task: dict) -> dict | None:
        item = None
        task_id = _int_or_none(task.get("id"))
        if task_id is not None:
            item = ledger.find_item_by_task(task_id)
        data = task.get("data")
        key = data.get("labelloop_key") if isinstance(data, dict) else None
        if item is None and isinstance(key, str) and (parsed := parse_task_key(key)):
            item = ledger.find_item(*parsed)
        return item

    @app.post("/predict")
    def predict():
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("field 'tasks' must be a list of task objects")
        if len(tasks) > MAX_TASKS:
            raise BadRequest(f"field 'tasks' holds {len(tasks)} tasks; at most {MAX_TASKS} per request")
        for position, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise BadRequest(f"tasks[{position}] must be an object")
        results: list[dict | None] = []
        misses: dict[int, dict] = {}
        for position, task in enumerate(tasks):
            item = stored_item(task)
            if item is not None and item.get("draft"):
                version = ledger.find_meta(f"round:{item['round_id']}:model_version", "teacher")
                results.append(prediction(item["draft"], item["score"], version))
            else:
                results.append(None)
                misses[position] = task
        if misses:
            drafts, version = live_drafts(misses)
            for position in misses:
                draft = drafts.get(position)
                results[position] = prediction(draft, None, version) if draft else {"model_version": version,
                                                                                      "result": []}
        return jsonify({"results": results})

    @app.post("/webhook")
    def webhook():
        if webhook_secret is not None:
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode(), webhook_secret.get_secret_value().encode()):
                return jsonify({"error": f"missing or wrong {WEBHOOK_SECRET_HEADER} header"}), 403
        data = body()
        action = data.get("action")
        if action is not None and not isinstance(action, str):
            raise BadRequest("field 'action' must be a string")
        ledger.record_event(
            action[:64] if action else None, _id_of(data.get("project")), _id_of(data.get("task")),
            _id_of(data.get("annotation")),
        )
        return jsonify({"status": "recorded"}), 201

    @app.after_request
    def _no_cache(reply: Response) -> Response:
        reply.headers.setdefault("Cache-Control", "no-store")
        return reply

    dashboard.register(app, ledger)  # /dashboard and /metrics, behind the same auth
    return app
