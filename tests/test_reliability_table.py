"""RELIABILITY.md stays true: every test it names is one pytest collects, and every reliability test is in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parents[1]
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def scenario_rows() -> dict[str, list[str]]:
    """Row number -> the test ids named in its last column."""
    rows: dict[str, list[str]] = {}
    for line in (PROJECT / "RELIABILITY.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[0].isdigit():
            rows[cells[0]] = TEST_ID.findall(cells[3])
    return rows


def collected(files: set[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *sorted(files)],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line.split("[", 1)[0] for line in result.stdout.splitlines() if "::" in line}


def test_every_scenario_names_a_test_that_exists_and_every_reliability_test_is_a_scenario() -> None:
    rows = scenario_rows()
    assert len(rows) >= 30
    assert list(rows) == [str(n) for n in range(1, len(rows) + 1)], "rows are numbered 1..N"
    assert not [number for number, ids in rows.items() if not ids], "a row without a test"
    named = {test_id for ids in rows.values() for test_id in ids}
    found = collected({test_id.split("::")[0] for test_id in named} | {"tests/test_reliability.py"})
    assert sorted(named - found) == [], "named in RELIABILITY.md but not collected by pytest"
    unlisted = {t for t in found if t.startswith("tests/test_reliability.py::")} - named
    assert sorted(unlisted) == [], "a reliability test that RELIABILITY.md does not list"
