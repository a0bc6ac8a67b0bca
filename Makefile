# Two commands matter: `make run` (the loop on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
LSVENV := .venv-ls
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STARTER := models/starter/config.json
BROWSER := /usr/bin/chromedriver

.PHONY: run demo test lint install clean-demo help

help:
	@echo "make run    start Label Studio, the ML backend and the scheduler on embedded defaults"
	@echo "make demo   the same, unattended, with simulated annotators; 2 rounds, then exit"
	@echo "make test   install what is needed and run the tests"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(LSVENV)/bin/label-studio:
	$(PYTHON) -m venv $(LSVENV)
	$(LSVENV)/bin/pip install --quiet --upgrade pip
	$(LSVENV)/bin/pip install --quiet label-studio==1.23.2

$(STARTER): $(STAMP) scripts/build_starter_model.py loop/starter.py data/paradetox/starter.tsv
	$(BIN)/python scripts/build_starter_model.py --out models/starter

install: $(STAMP) $(LSVENV)/bin/label-studio $(STARTER)

# The dashboard's browser test drives Debian's headless Chromium (no browser download needed).
$(BROWSER):
	@if [ "$$(id -u)" = 0 ]; then APT=""; elif command -v sudo >/dev/null; then APT=sudo; else \
		echo "The dashboard test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"; \
		exit 1; fi; \
	$$APT apt-get update -qq && $$APT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

run: install
	$(BIN)/labelloop --config configs/local.toml run

demo: install
	LABELLOOP_DATA_DIR=.labelloop-demo LABELLOOP_STUDIO__PORT=8081 LABELLOOP_BACKEND__PORT=9091 \
		$(BIN)/labelloop --config configs/local.toml demo --rounds 2

lint: $(STAMP)
	$(BIN)/ruff check .

test: install $(BROWSER) lint
	$(BIN)/python -m pytest

clean-demo:
	rm -rf .labelloop-demo
