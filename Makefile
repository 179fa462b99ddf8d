# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: venv
	@if [ -z "$$BATCHRELAY_REDIS_URL" ]; then bash scripts/ensure-redis.sh; fi
	$(BIN)/batchrelay demo

test: venv
	bash scripts/ensure-redis.sh
	bash scripts/ensure-chromium.sh
	bash scripts/check-compose.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

bench: venv
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
