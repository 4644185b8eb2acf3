# The two commands: `make demo` (run the lab suite, write the report) and `make test`.
# Both create .venv and install what they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= quick
OUT ?= runs/demo

.PHONY: demo test lint format venv venv-dev clean

venv:
	@bash scripts/setup_venv.sh dev

demo: venv
	$(VENV)/bin/trainlab run all --preset $(PRESET) --out $(OUT)
	@echo "report: $(OUT)/report.html"

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

format: venv
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache build dist
