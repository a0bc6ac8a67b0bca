"""The app's shared state: settings, ledger and live teacher, set once on `app.extensions` and read by views.

`init_app` stores them under `app.extensions["labelloop"]`; a view reaches them through `get_ledger()`,
`get_settings()` and `get_live_teacher()`, as Flask's tutorial reaches its database through `get_db()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from loop.config import Settings
from loop.ledger import Ledger
from loop.predictions import LazyTeacher

KEY = "labelloop"


@dataclass(frozen=True)
class Backend:
    """What every request of one app shares: its settings, its ledger and its (lazily made) teacher."""

    settings: Settings
    ledger: Ledger
    live_teacher: LazyTeacher


def init_app(app: Flask, settings: Settings, ledger: Ledger) -> Backend:
    """Set the app's settings, ledger and a teacher made on the first miss, once per app."""
    backend = Backend(settings, ledger, LazyTeacher(settings))
    app.extensions[KEY] = backend
    return backend


def get_backend(app: Flask | None = None) -> Backend:
    """The shared state of `app`, or of the current app (inside a request or app context)."""
    return (app or current_app).extensions[KEY]


def get_ledger() -> Ledger:
    """The current app's ledger."""
    return get_backend().ledger


def get_settings() -> Settings:
    """The current app's settings."""
    return get_backend().settings


def get_live_teacher() -> LazyTeacher:
    """The current app's live teacher: one per app, made on its first call."""
    return get_backend().live_teacher
