"""bench/gpu.sh, the one prepared GPU check, at toy sizes on the CPU: it must not fail on its first real try."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_both_parts_at_toy_sizes(shared_data, tmp_path):
    env = {**os.environ, "TINY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "gpu-report.txt").read_text()
    assert "seconds per step" in report and "paper-new" in report
    step_rows = [line for line in report.splitlines() if line.startswith("step ")]
    assert step_rows and all(float(v) > 0 for v in step_rows[0].split()[1:])
    assert "images/s" in report and (tmp_path / "convert.json").is_file()
