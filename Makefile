# Entry points: `make demo` and `make test` work on a fresh checkout.
VENV := .venv
STAMP := $(VENV)/.installed
# Folder holding the sample clips; when empty, the demo uses $$VIGIL_SAMPLE_DIR or
# ~/.cache/vigil/samples and downloads what is missing.
SAMPLES ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint system-deps bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	scripts/setup.sh
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/vigil demo $(if $(SAMPLES),--data-dir $(SAMPLES)) $(DEMO_ARGS)

system-deps:
	scripts/install-system-deps.sh

test: setup system-deps
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check pipeline training tests bench
	$(VENV)/bin/ruff format --check pipeline training tests bench
	$(VENV)/bin/mypy

bench: setup
	YOLO_OFFLINE=1 $(VENV)/bin/python bench/throughput.py $(if $(SAMPLES),--data-dir $(SAMPLES))

clean:
	rm -rf $(VENV) snapshots .pytest_cache .mypy_cache .ruff_cache
