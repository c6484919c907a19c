"""Smoke test of the benchmarks: the quick variant runs and writes valid JSON (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.workflow_helpers import REPO


def test_quick_bench_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["step"] for row in result["steps"]] == ["dem", "mask", "features", "tiles"]
    assert all(row["peak_rss_mb"] > 0 and row["seconds"] > 0 for row in result["steps"])
    assert result["machine"]["cores"] >= 1
    assert "peak RSS" in proc.stdout
