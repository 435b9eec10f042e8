"""Correctness smoke test of every kernel on a GPU, for the GPU check's quick profile (scripts/gpu_check.sh).

Thought attention (forward and backward, with the LSE; "folded": query steps folded into heads under GQA in
16-bit, held to the rule with FlashAttention's fixed 1e-3 atol, issue #28), mixed cross-entropy (forward and
backward) and thought sampling with its log-prob, for each backend and dtype asked, on 2-3 shapes per op (GQA,
padding, a = 12, m > 1, a window, odd sizes), each output against the fp64 reference under FlashAttention's rule
(tests/tolerance.py).
One CSV row per (op, backend, dtype, shape, tensor) with the measured error and the bound, appended and flushed as
each case finishes, so a run killed by its time limit still leaves what it did. Exit status 1 if any row fails.

    python scripts/gpu_smoke.py --out $OUT/smoke.csv            # triton and cuda, fp32 and bf16
    TRITON_INTERPRET=1 python scripts/gpu_smoke.py --preset tiny --impls triton --out /tmp/smoke.csv   # CPU
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from attention_cases import Case, attention_comparisons  # noqa: E402
from loss_cases import LossCase, ce_comparisons, sample_check  # noqa: E402
from test_attention_backends import FOLDED_CASES  # noqa: E402
from tolerance import FIXED_ATOL, Comparison, evaluate_rule  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = {
    "gpu": {
        "attention": [
            Case(2, 8, 2, 300, 12, 1, 128, "right"),  # GQA 4:1, a = 12, the official right padding, d = 128
            Case(2, 8, 8, 256, 4, 1, 128),  # no padding: sdpa's plain causal path
            Case(2, 4, 4, 200, 3, 4, 64, "left", window=64),  # m = a + 1 (prefix queries too), rows with no key
            Case(1, 6, 3, 129, 12, 2, 64, "holes"),  # two talk-like query steps, holed padding, n just past a tile
            Case(1, 4, 2, 150, 3, 2, 80, "right"),  # d = 80 (Phi): the d = 96 tensor-core instantiation
            Case(1, 2, 1, 70, 2, 1, 20),  # d not a multiple of 8: 16-bit inputs on the CUDA-core path
        ],
        "folded": FOLDED_CASES,
        "ce": [LossCase(1000, 1024, 32000, "random", 0.1), LossCase(257, 512, 50257, None, 0.2)],
        "sample": [(300, 512, 32001), (64, 256, 4099)],
    },
    # For the CPU interpreter (CI exercises the script itself on these).
    "tiny": {
        "attention": [Case(1, 4, 2, 17, 3, 2, 64, "right")],
        "folded": FOLDED_CASES[:1],
        "ce": [LossCase(19, 32, 300, "random", 0.2)],
        "sample": [(13, 32, 301)],
    },
}
COLUMNS = ["date", "gpu", "driver", "torch", "triton", "cuda", "op", "backend", "dtype", "shape", "tensor", "error",
           "baseline_error", "bound", "passed", "note"]


def environment(device: torch.device) -> dict[str, str]:
    """The columns every row repeats: when, on what, with which versions."""
    import triton

    gpu, driver = "cpu", "n/a"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            driver = "unknown"
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), gpu=gpu,
                driver=driver, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda or "none")


class RowWriter:
    """Appends rows to the CSV and flushes each one; counts failures."""

    def __init__(self, path: Path, common: dict[str, str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=COLUMNS)
        self.writer.writeheader()
        self.common = common
        self.failures = 0

    def write(self, passed: bool, **fields) -> None:
        self.failures += not passed
        self.writer.writerow({**self.common, **fields, "passed": passed})
        self.handle.flush()

    def comparison(self, key: dict, comparison: Comparison, atol: float | None = None) -> None:
        errors, violation = evaluate_rule(comparison, atol=atol)
        numbers = dict(error="", baseline_error="", bound="") if errors is None else dict(
            error=f"{errors.error:.4g}", baseline_error=f"{errors.baseline_error:.4g}", bound=f"{errors.bound:.4g}")
        self.write(violation is None, **key, tensor=comparison.name, **numbers, note=violation or "")


def run_case(op: str, shape, dtype: torch.dtype, impl: str, device: torch.device, rows: RowWriter) -> None:
    key = dict(op=op, backend=impl, dtype=str(dtype).removeprefix("torch."), shape=str(shape))
    start = time.perf_counter()
    try:
        if op in ("attention", "folded"):
            for comparison in attention_comparisons(shape, dtype, impl, device):
                rows.comparison(key, comparison, atol=FIXED_ATOL if op == "folded" else None)
        elif op == "ce":
            comparisons, ignored_losses = ce_comparisons(shape, dtype, impl, device)
            for comparison in comparisons:
                rows.comparison(key, comparison)
            nonzero = int(torch.count_nonzero(ignored_losses))
            rows.write(nonzero == 0, **key, tensor="ignored_loss", error=nonzero, baseline_error=0, bound=0,
                       note="count of ignored targets with a non-zero loss")
        else:
            check = sample_check(shape, dtype, impl, device)
            # A token may differ from the oracle's only at a near-tie; fp32 must match exactly.
            exact = dtype != torch.float32 or torch.equal(check.tokens, check.oracle_tokens)
            passed = check.max_gap <= check.tie_rounding and check.match_fraction > 0.9 and exact
            rows.write(passed, **key, tensor="tokens", error=f"{check.max_gap:.4g}", baseline_error="",
                       bound=f"{check.tie_rounding:.4g}",
                       note=f"largest oracle-score gap to the sampled token; match {check.match_fraction:.4f}")
            for comparison in check.comparisons:
                rows.comparison(key, comparison)
    except Exception as error:  # noqa: BLE001 - one broken backend must not hide the others' results
        rows.write(False, **key, tensor="-", error="", baseline_error="", bound="",
                   note=f"{type(error).__name__}: {error}".replace("\n", " ")[:500])
        traceback.print_exc()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"{op:<9} {impl:<6} {key['dtype']:<8} {str(shape):<40} {time.perf_counter() - start:6.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", choices=("triton", "cuda", "sdpa", "torch"),
                        default=["triton", "cuda", "sdpa"], help="sdpa runs the attention cases only")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--ops", nargs="+", choices=("attention", "folded", "ce", "sample"),
                        default=["attention", "folded", "ce", "sample"], help="folded runs the 16-bit dtypes only")
    parser.add_argument("--preset", choices=sorted(SHAPES), default=None, help="default: gpu on CUDA, tiny on CPU")
    parser.add_argument("--out", type=Path, required=True, help="CSV path")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and "triton" in args.impls and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        parser.error("impl triton on CPU needs TRITON_INTERPRET=1 set")
    preset = args.preset or ("gpu" if device.type == "cuda" else "tiny")
    rows = RowWriter(args.out, environment(device))
    for op in args.ops:
        for impl in (impl for impl in args.impls if op in ("attention", "folded") or impl != "sdpa"):
            for dtype_name in (name for name in args.dtypes if op != "folded" or name != "fp32"):
                for shape in SHAPES[preset][op]:
                    torch.manual_seed(0)
                    run_case(op, shape, DTYPES[dtype_name], impl, device, rows)
    print(f"wrote {args.out}: {rows.failures} failing row(s)")
    return 1 if rows.failures else 0


if __name__ == "__main__":
    sys.exit(main())
