"""Serve the ML backend: `python -m ml_backend [--config FILE] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import os

from loop import threads
from loop.config import load_settings
from ml_backend.app import create_app


def main() -> None:
    """Run the backend on the configured host and port (threaded Werkzeug server; gunicorn in Docker)."""
    parser = argparse.ArgumentParser(prog="python -m ml_backend", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("LABELLOOP_CONFIG"), help="TOML settings file")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    threads.configure(settings.threads)
    app = create_app(settings)
    app.run(host=args.host or settings.backend.host, port=args.port or settings.backend.port, threaded=True)


if __name__ == "__main__":
    main()
