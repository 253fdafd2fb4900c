# omniretain: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
export FEAST_USAGE := False
export BENTOML_DO_NOT_TRACK := True
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(PYTHON) -m uv sync --quiet --frozen --extra dev --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed ## Create .venv from the lock file (uv)

demo: install ## Simulate a retailer, run every stage, ask the live service for a decision
	$(VENV)/bin/omniretain demo

test: install ## Run the whole test suite (unit, integration, end-to-end)
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install ## Unit tests only
	$(VENV)/bin/pytest -q tests/unit

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install ## Format the code with ruff
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean: ## Remove generated state (keeps .venv)
	rm -rf .omniretain .pytest_cache
