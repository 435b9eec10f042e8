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


def test_quick_profile_puts_the_headline_first_and_fits_six_minutes():
    """A window may end after one call: the 1B step table first, then the op headline rows, then the smoke and the
    7B step; the extension build (78 s) is left to the full profile."""
    steps = dict(_dry_run("quick"))
    total = steps.pop("total")
    assert list(steps) == ["versions", "wheels", "step", "bench_attention", "bench_loss", "smoke", "big_step"]
    assert total == sum(steps.values()) <= 360


def test_full_profile_builds_before_the_cuda_kernels_run():
    steps = [name for name, _ in _dry_run("full")]
    assert steps.index("build") < steps.index("extension") < steps.index("tests")
    assert {"sanitizer", "bench_step", "big_step", "bench_generate", "fuzz"} <= set(steps)


def test_step_benchmark_dry_run_predicts_the_gpu_preset():
    """bench_step.py --preset gpu --dry-run: the shapes and the memory prediction, no model built (one model, n and
    path here: each prediction runs a meta-device step, about 10 s)."""
    result = subprocess.run([sys.executable, "benchmarks/bench_step.py", "--preset", "gpu", "--dry-run", "--models",
                             "llama1b", "--seq-len", "256", "--providers", "reference", "fast-ckpt"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(r"^llama1b\s+h2048 L16 H32/8 V32002\s+256\s+layer\s+([\d. ]+?)\s+(yes|no)$", result.stdout, re.M)
    assert row, result.stdout
    weights, optimizer, kv_cache, step, total = map(float, row.group(1).split())
    assert abs(weights + optimizer + step - total) < 0.15 and kv_cache < step and row.group(2) == "yes"
    hidden, layers, kv_width, mlp, vocab = 2048, 16, 512, 5632, 32002
    parameters = 2 * vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * mlp)
    assert abs(weights - 2 * parameters / 1e9) < 0.05  # bf16 weights (norm weights are below the rounding)
    assert "reference: not modelled" in result.stdout


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


def test_step_benchmark_records_an_out_of_memory_provider(tmp_path, monkeypatch):
    """A path that does not fit is a result of the table (the official path at B=8 on an 80 GB card), not a crash."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_step
    import bench_utils

    monkeypatch.setattr(bench_utils, "measure", lambda *args: None)  # what it returns on torch.OutOfMemoryError
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", bench_utils._MMAP_THRESHOLD)  # else the benchmark re-executes pytest
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # the benchmark's one thread: not the suite's
    assert bench_step.main(["--models", "tiny", "--providers", "reference", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "step_cpu.csv")))
    assert [(row["kernel_provider"], row["metric_name"], row["y_value_50"]) for row in rows] == [
        ("reference", "out_of_memory", "1")]
