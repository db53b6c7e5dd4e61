"""benchmarks/gpu_check.sh: valid bash, and its CPU fallback runs every part and prints the summary table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
PARTS = ["tests (pytest -m cuda)", "bench mit_b1 fp32", "bench mit_b1 bf16", "bench mit_b1 fp16",
         "memory plan mit_b4_40gb", "memory plan mit_b5_40gb", "memory plan mit_b4_80gb", "memory plan mit_b5_80gb",
         "compile off", "compile on", "demo"]


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


# The suite runs the fallback with one part (a bench) and the others listed as skipped (each part is a fresh
# Python process on 2 cores);
# `GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh` runs all of them by hand (about 3 minutes).
SKIP = ["tests", "bench:bf16", "memory", "compile", "demo"]
SKIPPED_PARTS = {"tests (pytest -m cuda)", "bench mit_b1 bf16", "bench mit_b1 fp16", "memory plan mit_b4_40gb",
                 "memory plan mit_b5_40gb", "memory plan mit_b4_80gb", "memory plan mit_b5_80gb", "compile off",
                 "compile on", "demo"}


@pytest.mark.slow
def test_cpu_fallback_runs_its_parts_and_prints_the_summary(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_CPU": "1", "GPU_CHECK_INSTALL": "0", "PYTHON": sys.executable,
           "GPU_CHECK_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "2",
           "GPU_CHECK_SKIP": " ".join(SKIP)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "CPU fallback" in out
    summary = out.split("===== gpu_check summary", 1)[1].split("===== end of summary", 1)[0]
    assert "| part | status | key numbers | seconds |" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    assert len(rows) == len(PARTS)  # every part is listed, skipped ones too
    for part, row in zip(PARTS, rows):
        assert row.startswith(f"| {part}"), (part, row)
        status = row.split("|")[2].strip()
        assert status == ("skipped" if part in SKIPPED_PARTS else "ok"), row
    assert "img/s" in rows[1] and "peak" in rows[1]
    written = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| part | status | key numbers | seconds |" in written and all(r in written for r in rows)
    assert (tmp_path / "out" / "gpu_check_logs.txt").is_file()
