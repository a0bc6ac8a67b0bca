# The ML backend under gunicorn, as a non-root user, configured by environment.
#   docker build -t labelloop .
#   docker run -p 9090:9090 -v labelloop-data:/data -e LABEL_STUDIO_API_KEY=... labelloop
# For a smaller image, pass the CPU-only PyTorch wheel index as PIP_EXTRA_INDEX_URL at build time.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    LABELLOOP_DATA_DIR=/data LABELLOOP_BACKEND__HOST=0.0.0.0 LABELLOOP_BACKEND__PORT=9090 \
    HF_HUB_OFFLINE=0

RUN useradd --create-home --uid 10001 labelloop && mkdir /data && chown labelloop /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY loop loop
COPY ml_backend ml_backend
COPY label_config label_config
COPY configs configs
COPY data data
RUN pip install . gunicorn

USER labelloop
EXPOSE 9090
VOLUME /data
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=3)"
CMD ["gunicorn", "--workers", "2", "--threads", "8", "--bind", "0.0.0.0:9090", "ml_backend.wsgi:app"]
