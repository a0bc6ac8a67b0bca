"""Who may call the backend: optional basic auth on every route but the open ones, and the webhook's secret.

Both secrets come from the environment through the settings; comparisons are constant-time, and no
answer ever repeats what was sent.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, jsonify, request

from loop.config import WEBHOOK_SECRET_HEADER
from ml_backend.state import get_settings

OPEN_ROUTES = {"/health", "/", "/openapi.json"}  # no secrets there; container health checks need them


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def require_basic_auth() -> Response | None:
    """A 401 unless the request carries the configured basic-auth pair (open routes and no auth: pass)."""
    auth = get_settings().backend_auth
    if auth is None or request.path in OPEN_ROUTES:
        return None
    given = request.authorization
    user, password = auth
    if (given is not None and given.type == "basic" and _same(given.username or "", user)
            and _same(given.password or "", password.get_secret_value())):
        return None
    reply = jsonify({"error": "authentication required (basic auth)"})
    reply.status_code = 401
    reply.headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
    return reply


def require_webhook_secret() -> tuple[Response, int] | None:
    """A 403 unless the request carries the configured webhook secret header (no secret set: pass)."""
    secret = get_settings().webhook_secret
    if secret is None or _same(request.headers.get(WEBHOOK_SECRET_HEADER, ""), secret.get_secret_value()):
        return None
    return jsonify({"error": f"missing or wrong {WEBHOOK_SECRET_HEADER} header"}), 403


def init_app(app: Flask) -> None:
    """Guard every route of the app (blueprints included) with `require_basic_auth`."""
    app.before_request(require_basic_auth)
