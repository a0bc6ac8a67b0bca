"""The Label Studio ML-backend protocol's read side: `/predict`, `/setup`, `/health` (and `/`), `/openapi.json`.

Views are thin: parse and validate the body, call `loop.predictions.predictions_for`, answer. A bad
body gets a 400 naming the field.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify

from loop.config import INSTANCE_ENV
from loop.predictions import predictions_for
from ml_backend.errors import BadRequest, json_body
from ml_backend.openapi import OPENAPI
from ml_backend.state import get_ledger, get_live_teacher

MAX_TASKS = 1000

bp = Blueprint("predict", __name__)


def learner_version() -> str:
    """The current learner's version as Label Studio sees it, e.g. `learner-v3`."""
    current = get_ledger().find_current_model()
    return f"learner-{current['version']}" if current else "learner-v0"


@bp.get("/health")
@bp.get("/")
def health() -> Response:
    """Liveness, the learner's current version, and the nonce of the run that started this process."""
    return jsonify({"status": "UP", "model_class": "labelloop", "model_version": learner_version(),
                    "instance": os.environ.get(INSTANCE_ENV)})


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of the backend's routes."""
    return jsonify(OPENAPI)


@bp.post("/setup")
def setup() -> Response:
    """Label Studio connects a project: answer the model version."""
    json_body()  # validates; the access_token it may carry is never stored or logged
    return jsonify({"model_version": learner_version()})


def _tasks(body: dict) -> list[dict]:
    """The body's `tasks`: a list of at most MAX_TASKS objects, or `BadRequest` naming the field."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("field 'tasks' must be a list of task objects")
    if len(tasks) > MAX_TASKS:
        raise BadRequest(f"field 'tasks' holds {len(tasks)} tasks; at most {MAX_TASKS} per request")
    for position, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise BadRequest(f"tasks[{position}] must be an object")
    return tasks


@bp.post("/predict")
def predict() -> Response:
    """One prediction per task, in order: the teacher's stored draft, or a live one for a miss."""
    tasks = _tasks(json_body())
    return jsonify({"results": predictions_for(get_ledger(), tasks, live=get_live_teacher())})
