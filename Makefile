# The two commands a newcomer needs: `make run` and `make test` (see README.md).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON ?= 3.12
RUN_ADDR ?= 127.0.0.1:8000

.PHONY: run test check venv venv-prod lint format bench fuzz clean

$(VENV)/.synced: pyproject.toml uv.lock
	$(UV) sync --locked
	@touch $@

venv: $(VENV)/.synced

run: venv
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(PY) manage.py migrate --no-input
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(PY) manage.py bouncer_keys generate --if-none
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(PY) manage.py runserver $(RUN_ADDR)

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=true $(VENV)/bin/mypy .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: check
	$(PY) -m pytest $(PYTEST_ARGS)

# The property suite (tests/properties/) with many more examples, drawn afresh on each run:
# FUZZ_EXAMPLES per endpoint (the normal suite runs 200, always the same ones).
FUZZ_EXAMPLES ?= 5000
fuzz: venv
	BOUNCER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/properties -p no:cacheprovider \
		-o timeout=0 $(PYTEST_ARGS)

# The benchmark (bench/README.md): starts everything it needs, prints and saves a report.
# BENCH_ARGS="--workloads e2ee-3 --seconds 4" for a quick look; see bench/run.py --help.
bench: venv
	cd bench && ../$(PY) run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
