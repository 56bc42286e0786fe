"""The benchmark still runs end to end (bench/README.md): a tiny run, no figures judged.

Its figures are read in bench/README.md, never asserted here; this only keeps `make bench`
working as the code under it changes: the stack starts, every request is answered 200, the
notifications arrive at the fakes, and the report's tables are complete.
"""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from peers import poetry_lock_requirements  # noqa: E402 - bench/ is scripts, not a package


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_a_short_benchmark_run_completes_without_errors() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--workloads",
            "e2ee-3",
            "apns-1",
            "register",
            "matrix",
            "--concurrency",
            "2",
            "--seconds",
            "1",
            "--half-load",
            "e2ee-3",
            "--overload",
            "--scaling",
            "1",
            "--no-report",
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [
        cells(line)
        for line in run.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]
    throughput = {row[0]: row for row in rows if len(row) == 11 and row[0] != "workload"}
    # --scaling: e2ee-3 again with one web process, in a fresh stack, labelled "1".
    assert throughput["1"][5] == "0", throughput["1"]
    e2ee, register = throughput["e2ee-3"], throughput["register"]
    [half_load] = [row for name, row in throughput.items() if name.startswith("e2ee-3 at ")]
    for row in (e2ee, throughput["apns-1"], register, half_load):
        assert row[5] == "0", row  # errors
        assert float(row[2].replace(",", "")) > 0, row  # requests/s
    assert float(e2ee[3].replace(",", "")) > 0, e2ee  # delivered/s, counted at the fakes
    assert e2ee[9] != "-", e2ee  # the raw limit was measured
    # The Matrix notify (the bouncer's /_matrix/push/v1/notify, its apps from the bench's
    # MATRIX_APPS_FILE): every pushkey accepted (a rejected one counts as an error) and sent.
    for shape in ("matrix-1", "matrix-10"):
        row = throughput[shape]
        assert row[5] == "0", row
        assert float(row[3].replace(",", "")) > 0, row
        assert row[9] != "-", row
    cpu = {row[0]: row for row in rows if len(row) == 10 and row[0] != "workload"}
    assert {"e2ee-3", "raw limit, e2ee-3", "register"} <= set(cpu), cpu
    for row in cpu.values():
        assert all(float(cell) >= -1 for cell in row[2:]), row
        assert float(row[-1]) > 0, row  # the machine's CPU per item


def test_neighbours_runs_and_a_missing_peer_is_skipped() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--neighbours",
            "--neighbours-seconds",
            "1",
            "--neighbours-lead",
            "0.5",
            "--neighbours-flood",
            "4",
            "--runs",
            "2",
            "--fakes-first",
            "--peer",
            "sygnal",
            "--sygnal-archive",
            str(BENCH / "no-such-archive.tar.gz"),
            "--no-report",
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--peer sygnal skipped" in run.stdout, run.stdout
    rows = [
        cells(line)
        for line in run.stdout.splitlines()
        if line.startswith(("| bouncer |", "| Sygnal |"))
    ]
    assert [row[:2] for row in rows] == [
        ["bouncer", "alone"],
        ["bouncer", "flood at 4 in flight"],
    ], run.stdout
    for row in rows:
        assert row[5].startswith("0 (of "), row  # the quiet server's errors
    assert float(rows[1][6].replace(",", "")) > 0, rows[1]  # the flood's requests/s
    assert float(rows[1][7].replace(",", "")) > 0, rows[1]  # its notifications, at the fake


def test_poetry_lock_pins_become_hashed_requirements() -> None:
    lock = {
        "package": [
            {
                "name": "aioapns",
                "version": "3.2",
                "groups": ["main"],
                "files": [{"file": "aioapns-3.2.tar.gz", "hash": "sha256:40f6"}],
            },
            {
                "name": "tomli",
                "version": "2.0.1",
                "groups": ["main"],
                "markers": 'python_version == "3.10"',
            },
            {"name": "mypy", "version": "1.5.1", "groups": ["dev"]},
            {
                "name": "cffi",
                "version": "1.16.0",
                "groups": ["main", "dev"],
                "markers": {"main": "platform_python_implementation != 'PyPy'"},
            },
            {
                "name": "six",
                "version": "1.16.0",
                "groups": ["main", "dev"],
                "markers": {"dev": "sys_platform == 'win32'"},
            },
        ]
    }
    assert poetry_lock_requirements(lock, frozenset({"main"})) == [
        "aioapns==3.2 --hash=sha256:40f6",
        'tomli==2.0.1 ; python_version == "3.10"',
        "cffi==1.16.0 ; (platform_python_implementation != 'PyPy')",
        "six==1.16.0",
    ]
