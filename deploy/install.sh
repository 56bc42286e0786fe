#!/usr/bin/env bash
# The one install recipe for a production bouncer, run from the checkout it installs:
#
#     deploy/install.sh
#
# It creates .venv with the locked dependencies (no dev group) and collects the admin's
# static files into STATIC_ROOT (default: ./static). It touches no database and starts
# nothing; docs/install.md says what comes next. The Dockerfile runs it, and so does
# tests/test_deploy.py. Safe to run again after `git pull` (that is the upgrade path).
#
# Environment:
#   UV                     the uv command to use (default: uv on PATH, else installed into .uv/)
#   UV_PROJECT_ENVIRONMENT where the virtualenv goes (default: .venv)
#   STATIC_ROOT            where static files are collected (default: ./static)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ -z "${UV:-}" ]; then
    if command -v uv >/dev/null 2>&1; then
        UV=uv
    else
        # A private copy of uv, so that the system Python (PEP 668) is left alone.
        echo "install.sh: uv not found; installing it into $root/.uv"
        python3 -m venv "$root/.uv"
        "$root/.uv/bin/pip" install --quiet --disable-pip-version-check uv
        UV="$root/.uv/bin/uv"
    fi
fi

# If uv has to download Python 3.12, it goes inside the installation, readable by the
# services (the systemd units hide home directories: ProtectHome=yes).
export UV_PYTHON_INSTALL_DIR="${UV_PYTHON_INSTALL_DIR:-$root/.python}"

echo "install.sh: installing locked dependencies (Python 3.12, no dev group)"
$UV sync --locked --no-dev --python 3.12
venv="${UV_PROJECT_ENVIRONMENT:-$root/.venv}"

echo "install.sh: collecting static files"
# collectstatic reads the settings, which insist on production secrets; it needs none of
# them, so throwaway values are passed to this one command only.
DJANGO_DEBUG=false \
    DJANGO_SECRET_KEY=collectstatic-only \
    BOUNCER_KEY_ENCRYPTION_KEY=$("$venv/bin/python" -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())') \
    DATABASE_URL=sqlite:///:memory: \
    CELERY_BROKER_URL= \
    "$venv/bin/python" manage.py collectstatic --no-input --clear -v 0

"$venv/bin/python" -c 'import django, celery, uvicorn; print(f"install.sh: done (Django {django.__version__}, Celery {celery.__version__}, uvicorn {uvicorn.__version__})")'
