# Every target that needs Python depends on the virtual environment, so on a fresh machine
# `make demo` and `make test` are each one command.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install lock test demo bench replicate lint clean

install: $(STAMP)

# Installs exactly what requirements.lock pins (hash-checked, dev extras and build backend included),
# then kwav2vec itself without resolving anything: a new release anywhere cannot change the tree.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes --no-deps -r requirements.lock
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Refreshes the lock on purpose (never run by another target): a universal resolve with uv, so one
# file serves every platform and Python 3.10-3.12 ([tool.uv] environments) through markers, with hashes. uv itself
# is pinned and runs from a throw-away environment.
UV_VERSION := 0.13.9
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q uv==$(UV_VERSION)
	.lock-venv/bin/uv pip compile pyproject.toml requirements-build.in --extra dev --universal \
	    --python-version 3.10 --generate-hashes -o requirements.lock
	rm -rf .lock-venv

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) scripts/demo.py

# Speed/memory ratios against the reference implementations (minutes). replicate.py, three
# fine-tuning runs, has a target of its own.
bench: $(STAMP)
	for f in bench/*.py; do [ "$$f" = bench/replicate.py ] && continue; echo "== $$f"; $(PY) $$f || exit 1; done

replicate: $(STAMP)
	$(PY) bench/replicate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
