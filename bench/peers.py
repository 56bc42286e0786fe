"""Peers the benchmark can measure the bouncer against, installed and started on loopback.

Sygnal (the Matrix push gateway, /work/shared/peers/): unpacked from its source archive and
installed into a virtualenv of its own under the run's temporary directory, from the pins
of its poetry.lock (PyPI only, hashes checked), then the source tree with --no-deps, as its
Dockerfile does. Its APNs pushkin is pointed at the benchmark's fake APNs by
bench/sygnal_launcher.py.
"""

import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from harness import Stack

SYGNAL_ARCHIVE = Path("/work/shared/peers/sygnal-14591a7.tar.gz")
SYGNAL_PYTHON = "3.12"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the run goes on without it."""


def poetry_lock_requirements(lock: dict[str, Any], groups: frozenset[str]) -> list[str]:
    """A poetry.lock (parsed) as pip requirement lines: `name==version ; markers --hash=...`
    for every package of the given dependency groups, what `poetry export` writes.

    poetry.lock 2.x says per package which groups need it (`groups`) and under which
    environment markers (`markers`, one string, or a table of one string per group); a
    package needed by a wanted group with no marker is needed everywhere."""
    lines = []
    for package in lock.get("package", []):
        wanted = groups & set(package.get("groups", ["main"]))
        if not wanted:
            continue
        markers = package.get("markers")
        if isinstance(markers, dict):
            per_group = [markers.get(group) for group in sorted(wanted)]
            markers = None if None in per_group else " or ".join(f"({m})" for m in per_group if m)
        line = f"{package['name']}=={package['version']}"
        if markers:
            line += f" ; {markers}"
        hashes = [f["hash"] for f in package.get("files", []) if "hash" in f]
        line += "".join(f" --hash={h}" for h in hashes)
        lines.append(line)
    return lines


def install_sygnal(workdir: Path, archive: Path = SYGNAL_ARCHIVE) -> Path:
    """Sygnal in its own virtualenv under `workdir`; returns the virtualenv's python."""
    if not archive.exists():
        raise PeerUnavailable(f"{archive} not found")
    uv = shutil.which("uv")
    if uv is None:
        raise PeerUnavailable("uv not found on PATH (it creates Sygnal's virtualenv)")
    source = workdir / "sygnal-src"
    source.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    with (source / "poetry.lock").open("rb") as f:
        requirements = poetry_lock_requirements(tomllib.load(f), frozenset({"main"}))
    (workdir / "sygnal-requirements.txt").write_text("\n".join(requirements) + "\n")
    venv = workdir / "sygnal-venv"
    python = venv / "bin" / "python"
    steps = [
        [uv, "venv", "--quiet", "--python", SYGNAL_PYTHON, str(venv)],
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--no-deps",
            "--require-hashes",
            "--index-url",
            "https://pypi.org/simple",
            "-r",
            str(workdir / "sygnal-requirements.txt"),
        ],
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--no-deps",
            "--index-url",
            "https://pypi.org/simple",
            str(source),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise PeerUnavailable(
                f"`{' '.join(step[:3])} ...` failed: {done.stderr.strip()[-2000:]}"
            )
    check = subprocess.run(
        [str(python), "-c", "import sygnal.sygnal, aioapns"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check.returncode != 0:
        raise PeerUnavailable(f"Sygnal does not import: {check.stderr.strip()[-2000:]}")
    return python


def start_sygnal(s: "Stack", python: Path, *, log_level: str = "INFO") -> str:
    """Sygnal on a free loopback port, one APNs app (harness.MATRIX_APP_ID) signing with the
    same .p8 key as the bouncer and sending to the same fake APNs (the same `apps:` entry as
    the bouncer's MATRIX_APPS_FILE); returns its base URL.

    Its process is the Stack's role "sygnal" (CPU, memory), stopped with the stack."""
    from harness import ROOT, matrix_apps

    from tests.services import free_port, wait_for_port

    port = free_port()
    apns = urlsplit(s.env["APNS_ENDPOINT"])
    config = {
        "http": {"bind_addresses": ["127.0.0.1"], "port": port},
        "log": {
            "setup": {
                "version": 1,
                "formatters": {"normal": {"format": LOG_FORMAT}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "formatter": "normal",
                        "filename": str(s.workdir / "sygnal-app.log"),
                    }
                },
                # Its production level, as the bouncer runs at its own (INFO: a line per send).
                "root": {"handlers": ["file"], "level": log_level},
                "disable_existing_loggers": False,
            },
            "access": {"x_forwarded_for": False},
        },
        "metrics": {
            "prometheus": {"enabled": False},
            "opentracing": {"enabled": False},
            "sentry": {"enabled": False},
        },
        "apps": matrix_apps(s.env),
    }
    config_file = s.workdir / "sygnal.yaml"
    config_file.write_text(json.dumps(config, indent=2))  # YAML reads JSON
    s.spawn(
        "sygnal",
        [str(python), str(ROOT / "bench" / "sygnal_launcher.py")],
        env={
            "SYGNAL_CONF": str(config_file),
            "BENCH_APNS_HOST": apns.hostname or "127.0.0.1",
            "BENCH_APNS_PORT": str(apns.port or 443),
            "BENCH_APNS_CA_FILE": s.env["PUSH_CA_FILE"],
            # Sygnal's interpreter, not the bouncer's: nothing of the bouncer on its path.
            "PYTHONPATH": "",
            "VIRTUAL_ENV": str(python.parent.parent),
        },
    )
    try:
        wait_for_port(port, timeout=60)
    except RuntimeError as e:
        log = (s.workdir / "sygnal.log").read_text(errors="replace")[-2000:]
        raise PeerUnavailable(f"Sygnal did not start: {e}\n{log}") from e
    return f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    # `python bench/peers.py DIR`: install Sygnal into DIR (to try the install alone).
    print(install_sygnal(Path(sys.argv[1])))
