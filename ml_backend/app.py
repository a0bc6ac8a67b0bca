"""The Label Studio ML backend's app factory: serves the teacher's stored outputs as pre-annotations.

`create_app` sets the settings, the ledger and a lazily made teacher once on the app (ml_backend/state.py)
and registers the parts: predict.py (`/predict`, `/setup`, `/health`, `/`, `/openapi.json`), webhook.py
(`/webhook`), dashboard.py (`/dashboard`, `/metrics`), auth.py (optional basic auth on all but the
open routes, the webhook's shared secret) and errors.py (a JSON 4xx for bad input, a bare 500 for a
fault of ours, logged without request data). Views are thin: parse, call `loop`, answer.
"""

from __future__ import annotations

from flask import Flask

from loop.config import Settings
from loop.ledger import Ledger
from ml_backend import auth, dashboard, errors, predict, state, webhook

MAX_BODY = 8 * 1024 * 1024


def create_app(settings: Settings, ledger: Ledger | None = None) -> Flask:
    """The Flask app over one project's ledger (the settings' ledger file unless one is given)."""
    app = Flask("labelloop")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    state.init_app(app, settings, ledger if ledger is not None else Ledger(settings.ledger_path))
    auth.init_app(app)  # first: it guards every route below
    errors.init_app(app)
    app.register_blueprint(predict.bp)
    app.register_blueprint(webhook.bp)
    dashboard.register(app)  # /dashboard and /metrics, behind the same auth
    return app
