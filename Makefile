# Every target that needs Python depends on the virtual environment, so on a fresh machine
# `make demo` and `make test` are each one command.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install test demo bench replicate lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

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
