# The two commands a newcomer needs: `make run` and `make test` (see README.md).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON ?= 3.12
# Where `make run` and `make demo` serve: HOST:PORT. Another host than 127.0.0.1 or localhost
# must also be in ALLOWED_HOSTS (e.g. RUN_ADDR=0.0.0.0:8000 ALLOWED_HOSTS=bouncer.lan).
RUN_ADDR ?= 127.0.0.1:8000
RUN_URL = http://$(subst 0.0.0.0,127.0.0.1,$(RUN_ADDR))

.PHONY: run demo test test-fast system-packages check venv venv-run format bench fuzz clean

# The development environment: runtime and dev dependencies (tests, lint, types).
$(VENV)/.synced: pyproject.toml uv.lock
	$(UV) sync --locked
	@touch $@

venv: $(VENV)/.synced

# Runtime dependencies only; --inexact leaves the tools of a development .venv in place.
venv-run:
	@$(UV) sync --locked --no-dev --inexact --quiet

# `make run` is the product as production runs it (DEBUG off) on secrets generated once into
# var/ for this checkout (bouncer/settings.py), which later commands here read too.
run demo: export BOUNCER_LOCAL_SECRETS = true

# The embedded SQLite database migrated, the admin's static files collected, a key pair and
# an admin account if there are none; then the production web server, one process (SQLite
# takes one writer at a time).
run: venv-run
	$(PY) manage.py migrate --no-input -v 0
	$(PY) manage.py collectstatic --no-input -v 0
	@$(PY) manage.py first_run --url $(RUN_URL)
	exec $(PY) manage.py serve --bind $(RUN_ADDR) --workers 1

# `make run` with fake APNs and FCM on loopback and a simulated Zulip server (README.md).
demo: venv
	exec $(PY) -m demo --addr $(RUN_ADDR)

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=true $(VENV)/bin/mypy .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Debian packages the suite needs (PostgreSQL, Redis, nginx, systemd-analyze, Chromium):
# installed where missing when root, else named.
system-packages:
	@tests/system-packages.sh

# Everything: lint, types, the whole suite. PYTEST_ARGS passes options to pytest.
test: system-packages check
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the tests marked slow (processes, installs, browsers): a quick loop.
test-fast: system-packages check
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

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
