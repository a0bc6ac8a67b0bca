"""WSGI entry point for gunicorn: `gunicorn ml_backend.wsgi:app` (settings from LABELLOOP_CONFIG + env)."""

from __future__ import annotations

import os

from loop import threads
from loop.config import load_settings
from ml_backend.app import create_app

settings = load_settings(os.environ.get("LABELLOOP_CONFIG") or None)
threads.configure(settings.threads)
app = create_app(settings)
