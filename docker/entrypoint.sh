#!/bin/sh
# Container entry point: the ML backend under gunicorn and the scheduler beside it. A TERM or INT
# stops both; if either one exits, the other is stopped and the container exits with its code.
set -eu
gunicorn --workers "${GUNICORN_WORKERS:-2}" --threads "${GUNICORN_THREADS:-8}" \
    --bind "0.0.0.0:${LABELLOOP_BACKEND__PORT:-9090}" --access-logfile - ml_backend.wsgi:app &
backend=$!
labelloop run --no-backend &
scheduler=$!
trap 'kill -TERM "$backend" "$scheduler" 2>/dev/null' TERM INT
code=0
while kill -0 "$backend" 2>/dev/null && kill -0 "$scheduler" 2>/dev/null; do
    sleep 1
done
kill -TERM "$backend" "$scheduler" 2>/dev/null || true
wait "$backend" || code=$?
wait "$scheduler" || code=$?
exit "$code"
