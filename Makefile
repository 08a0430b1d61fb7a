# choreo: machine set-up and entry points. `make setup` is idempotent and fast on re-runs.
SHELL := /bin/bash
VENV := .venv
PYTEST_ARGS ?=

.PHONY: setup venv check demo up down test chaos bench clean

setup: venv
	bash scripts/ensure-services.sh

venv:
	bash scripts/bootstrap.sh

# The fast loop, no service needed: format, lint (with the complexity rule), types, the unit
# tests (pointed at closed ports, so a unit test that needs a server fails here), the docs.
check: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	CHOREO_BROKER_URL=amqp://guest:guest@127.0.0.1:9// CHOREO_REDIS_URL=redis://127.0.0.1:9/0 \
	  $(VENV)/bin/python -m pytest tests/unit -q $(PYTEST_ARGS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"

demo: setup
	$(VENV)/bin/choreo demo

up: setup
	$(VENV)/bin/choreo up

down:
	$(VENV)/bin/choreo down

# The suite needs RabbitMQ, Redis and PostgreSQL. pytest exit 5 = no tests collected: fail.
# --durations: the slowest steps in CI's log, where the suite's time budget is watched.
test: export CHOREO_NEED_POSTGRES := 1
test: setup
	rc=0; $(VENV)/bin/python -m pytest --durations=25 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: ERROR: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	echo "== the same integration and e2e tests on PostgreSQL"; \
	CHOREO_TEST_DATABASE_SERVER=postgresql://postgres:postgres@127.0.0.1:5432 \
	  $(VENV)/bin/python -m pytest --durations=25 tests/integration tests/e2e $(PYTEST_ARGS)

chaos: setup
	$(VENV)/bin/choreo chaos

# The bench has a choreo row on PostgreSQL too.
bench: export CHOREO_NEED_POSTGRES := 1
bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf .venv .venv-tools data run
