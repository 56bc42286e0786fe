#!/usr/bin/env bash
# The Debian packages the test suite needs beside the Python ones, installed where missing.
# `make test` runs this first, so that the suite passes on a fresh machine by itself:
#
#   redis-server   the Redis server tests/services.py starts for the session
#   postgresql     its server binaries (initdb, postgres), unless some version is already in
#                  /usr/lib/postgresql/*/bin; tests/services.py starts a throwaway cluster
#   nginx-light    tests/test_deploy.py checks the nginx site (nginx -t) and runs it
#   systemd        systemd-analyze, which tests/test_deploy.py uses to lint the units
#   chromium       the browser tests (tests/browser/), driven by Playwright at /usr/bin/chromium
#
# As root it installs them (apt-get update only when an install fails, e.g. on a fresh image
# with no package lists); otherwise it names them and fails, since the suite cannot pass.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -x /usr/bin/chromium ] || missing+=(chromium)

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "The test suite needs these Debian packages, which are missing: ${missing[*]}" >&2
    echo "Install them as root, then run make test again:" >&2
    echo "    apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "system-packages.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
