# rds-migrations: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export UV_LINK_MODE ?= copy
# Evaluated at each use, so it sees a uv installed by the `uv` target below.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: demo test lint bench uv sync clean

# uv itself, from PyPI, when the machine does not have it yet.
uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

# Compiled bytecode: every worker, CLI and test subprocess imports Prefect, 2.2 s from bytecode and 5.5 s
# from source here (this machine sets PYTHONDONTWRITEBYTECODE, so nothing would ever be cached otherwise).
sync: uv
	@$(UV) sync --locked --quiet --compile-bytecode

demo: sync
	$(UV) run rds-migrations demo

test: sync
	$(UV) run pytest

lint: sync
	$(UV) run ruff check .

bench: sync
	$(UV) run python -m bench

clean:
	-$(UV) run python -c "from tasks.engine.embedded import embedded_server; embedded_server().stop()"
	rm -rf .rds-migrations
