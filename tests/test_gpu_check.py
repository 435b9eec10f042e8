"""The GPU check (scripts/gpu_check.sh) cannot rot while no GPU is around: its dry run lists every step with a
budget (the quick profile within 6 minutes) and the Python entry points parse their arguments; its correctness
smoke test (scripts/gpu_smoke.py) runs here on the interpreted Triton kernels and the torch path, writes a row per
output, and fails a wrong result."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_smoke  # noqa: E402
from tolerance import Comparison  # noqa: E402


def _dry_run(profile: str) -> list[tuple[str, int]]:
    env = {**os.environ, "DRY_RUN": "1", "PROFILE": profile, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return [(name, int(budget)) for name, budget in re.findall(r"^  (\w+)\s+(\d+) s$", result.stdout, re.M)]


def test_quick_profile_fits_six_minutes():
    steps = dict(_dry_run("quick"))
    total = steps.pop("total")
    assert list(steps) == ["versions", "wheels", "build", "smoke", "bench_attention", "bench_loss"]
    assert total == sum(steps.values()) <= 360


def test_full_profile_runs_the_rest():
    steps = dict(_dry_run("full"))
    assert {"tests", "sanitizer", "bench_step", "big_step", "bench_generate", "fuzz"} <= set(steps)


def test_smoke_writes_a_passing_row_per_output(tmp_path):
    out = tmp_path / "smoke.csv"
    assert gpu_smoke.main(["--preset", "tiny", "--impls", "triton", "torch", "sdpa", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    per_case = {"attention": 5, "ce": 7, "sample": 4}  # o/lse/dq/dk/dv; loss/lse/4 grads/ignored; tokens/lp/2 grads
    expected = (sum(per_case.values()) * 2 + per_case["attention"]) * 2  # (triton, torch; sdpa: attention) x dtypes
    expected += per_case["attention"] * 3  # folded: the three backends in bf16 only
    assert len(rows) == expected
    assert all(row["passed"] == "True" for row in rows), [row for row in rows if row["passed"] != "True"]
    assert {row["gpu"] for row in rows} == {"cpu"} and rows[0]["torch"] == torch.__version__


def test_smoke_fails_a_wrong_result(tmp_path):
    oracle = torch.randn(8, dtype=torch.float64)
    rows = gpu_smoke.RowWriter(tmp_path / "smoke.csv", gpu_smoke.environment(torch.device("cpu")))
    key = dict(op="attention", backend="triton", dtype="float32", shape="test")
    rows.comparison(key, Comparison("o", oracle.float(), oracle.float(), oracle, torch.float32))
    rows.comparison(key, Comparison("o", (oracle + 1e-3).float(), oracle.float(), oracle, torch.float32))
    rows.handle.close()
    assert rows.failures == 1
    written = list(csv.DictReader(open(tmp_path / "smoke.csv")))
    assert [row["passed"] for row in written] == ["True", "False"]
    assert "max error" in written[1]["note"]


def test_smoke_needs_the_interpreter_for_triton_on_cpu(monkeypatch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU triton compiles")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit):
        gpu_smoke.main(["--impls", "triton", "--out", str(tmp_path / "x.csv")])
