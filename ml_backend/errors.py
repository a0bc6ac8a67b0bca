"""Bad input and faults as JSON: `BadRequest`, the body reader that raises it, and the app's error handlers.

A 4xx answer is `{"error": ...}` naming what was wrong; a fault of ours is a bare 500 whose log line
names the route and the exception type only, never the request or the exception text (either may
carry a token).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from loop.errors import LabelloopError

log = logging.getLogger(__name__)


class BadRequest(LabelloopError):
    """A request the backend cannot use; answered as a 400 with a JSON error naming the field."""


def json_body() -> dict[str, Any]:
    """The request's JSON object body, or `BadRequest`."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object body (Content-Type: application/json)")
    return data


def _bad(exc: BadRequest) -> tuple[Response, int]:
    return jsonify({"error": str(exc)}), 400


def _http(exc: HTTPException) -> tuple[Response, int]:
    return jsonify({"error": exc.description or exc.name}), exc.code or 500


def _fault(exc: Exception) -> tuple[Response, int]:
    # never echo the request or the exception text: either may carry a token
    log.error("%s %s failed: %s", request.method, request.path, type(exc).__name__)
    return jsonify({"error": "internal error; see the backend log"}), 500


def _no_store(reply: Response) -> Response:
    reply.headers.setdefault("Cache-Control", "no-store")
    return reply


def init_app(app: Flask) -> None:
    """Answer `BadRequest` and HTTP errors as JSON 4xx, anything else as a JSON 500; mark replies no-store."""
    app.register_error_handler(BadRequest, _bad)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _fault)
    app.after_request(_no_store)
