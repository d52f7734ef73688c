# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# torch first, alone: pip takes the CPU build from the machine's disk (asked for by a range, or by
# sentence-transformers, it could fetch a CUDA build of several GB).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/agent demo

test: $(VENV)/.installed-dev
	USE_REAL_TESTS=$${USE_REAL_TESTS:-0} $(BIN)/python -m pytest -q tests

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-dev

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/lead_store.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/job_queue.py
	$(BIN)/python bench/celery_path.py
	$(BIN)/python bench/campaign.py
	$(BIN)/python bench/embeddings.py
	$(BIN)/python bench/vector_index.py
	$(BIN)/python bench/search_quality.py
	$(BIN)/python bench/hybrid_search.py
	$(BIN)/python bench/smtp.py
	$(BIN)/python bench/inbound.py

clean:
	rm -rf $(VENV) build *.egg-info
