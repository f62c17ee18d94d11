"""The bench's command line, measuring nothing: what `--help` promises, and `--render` before any bench run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT)})


def test_render_before_any_bench_run_says_so_in_one_line_naming_the_file_and_make_bench(tmp_path: Path) -> None:
    """On a fresh clone bench/out/results.json does not exist: `--render` said so with a FileNotFoundError
    traceback; it names the file and the run that writes it, in one line, exit 2."""
    missing = tmp_path / "out" / "results.json"
    done = bench("--render", str(missing), cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.count("\n") == 1 and str(missing) in done.stderr and "make bench" in done.stderr


def test_help_gives_the_full_runs_duration_as_benchmarks_md_does(tmp_path: Path) -> None:
    """`bench --help` said "a few minutes" where BENCHMARKS.md says 9–11: the two agree."""
    documented = re.search(r"make bench\s+# (\d+–\d+ minutes)", (PROJECT / "BENCHMARKS.md").read_text())
    assert documented, "BENCHMARKS.md's Reproduce block gives make bench's duration"
    done = bench("--help", cwd=tmp_path)
    assert done.returncode == 0 and f"everything, {documented.group(1)}" in done.stdout
