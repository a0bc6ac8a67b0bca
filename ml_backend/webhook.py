"""The Label Studio webhook (`/webhook`): record the event in the ledger and answer 201 at once.

Training never happens inside a request: the scheduler reads the recorded events. When a shared
secret is configured, a request without it gets a 403 before its body is read.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from loop.ledger import row_id
from ml_backend.auth import require_webhook_secret
from ml_backend.errors import BadRequest, json_body
from ml_backend.state import get_ledger

bp = Blueprint("webhook", __name__)
bp.before_request(require_webhook_secret)


def _id_of(value: Any) -> int | None:
    """An id given either as a number or as an object with an `id` (Label Studio sends both); None for
    anything that cannot be one of ours (an id past SQLite's integers was a 500)."""
    return _id_of(value.get("id")) if isinstance(value, dict) else row_id(value)


@bp.post("/webhook")
def webhook() -> tuple[Response, int]:
    """Record one Label Studio event (action, project, task, annotation) and answer at once."""
    data = json_body()
    action = data.get("action")
    if action is not None and not isinstance(action, str):
        raise BadRequest("field 'action' must be a string")
    get_ledger().record_event(
        action[:64] if action else None, _id_of(data.get("project")), _id_of(data.get("task")),
        _id_of(data.get("annotation")),
    )
    return jsonify({"status": "recorded"}), 201
