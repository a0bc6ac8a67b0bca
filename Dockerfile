# The ML backend (gunicorn) and the scheduler, as a non-root user, configured by environment.
#   docker build -t labelloop .
#   docker run -p 9090:9090 -v labelloop-data:/data \
#     -e LABELLOOP_STUDIO__URL=https://label-studio.example -e LABEL_STUDIO_API_KEY=... \
#     -e LABELLOOP_BACKEND__PUBLIC_URL=http://this-host:9090 -e OPENAI_API_KEY=... labelloop
# Settings: LABELLOOP_<SECTION>__<FIELD> (see README) or a TOML file in LABELLOOP_CONFIG.
# Optional: BASIC_AUTH_USER / BASIC_AUTH_PASS (backend basic auth), LABELLOOP_WEBHOOK_SECRET.
# For a smaller image, pass the CPU-only PyTorch wheel index as PIP_EXTRA_INDEX_URL at build time.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    LABELLOOP_DATA_DIR=/data LABELLOOP_BACKEND__HOST=127.0.0.1 LABELLOOP_BACKEND__PORT=9090

RUN useradd --create-home --uid 10001 labelloop && mkdir /data && chown labelloop /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY loop loop
COPY ml_backend ml_backend
RUN pip install . "gunicorn>=22,<28"
COPY label_config label_config
COPY configs configs
COPY data data
COPY docker/entrypoint.sh /usr/local/bin/labelloop-entrypoint

USER labelloop
EXPOSE 9090
VOLUME /data
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=3)"
ENTRYPOINT ["labelloop-entrypoint"]
