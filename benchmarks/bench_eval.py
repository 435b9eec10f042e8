"""Benchmark teacher-forced thinking evaluation (``quietstar_fast.eval.score_tokens``, the official eval forward:
one talk step, one pass) on the fast path against the reference path, time and peak memory, side by side.

Providers
  reference       the official eval forward computed as the official code does (impl="reference": dense
                  [C | D | ... | D] masks through the model's stock attention, full logits at every thought step),
                  thinking at every position
  fast            the same call on the fast path (thought attention, fused LM-head ops), every position
  fast-positions  what evaluate_task and the lm-eval model run: step 0 over the rows, then thoughts only at the
                  positions the metric reads (``score_positions``): here the last ANSWER_TOKENS of each row, a
                  GSM8K answer (" 72" and newline)

All with N = 12 (the official default), the same batch, thoughts drawn from one seed (every provider gives the
official numbers: tests/test_official_eval.py). Models as in bench_step.py (CPU: tiny and smollm2; GPU: llama1b),
n = 256 (the official eval length), batch 4. Results: CSV (Liger's schema) and PNG under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402
import bench_utils  # noqa: E402

from quietstar_fast import QuietStar  # noqa: E402
from quietstar_fast.eval import score_positions, score_tokens  # noqa: E402

PROVIDERS = ("reference", "fast", "fast-positions")
ANSWER_TOKENS = 4


def score_fn(quiet: QuietStar, provider: str, ids: torch.Tensor, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    rows, seq_len = ids.shape
    answer_rows = torch.arange(rows).repeat_interleave(ANSWER_TOKENS)
    answer_positions = torch.arange(seq_len - 1 - ANSWER_TOKENS, seq_len - 1).repeat(rows)

    def run():
        quiet.impl = "reference" if provider == "reference" else "fast"
        if provider == "fast-positions":
            return score_positions(quiet, ids, None, answer_rows, answer_positions, generator=generator)
        return score_tokens(quiet, ids, generator=generator)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_args(parser, PROVIDERS, repeats=3)
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2", "llama1b"], default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, nargs="+", default=[256])
    parser.add_argument("--n-ahead", type=int, default=12)
    args = parser.parse_args(argv)

    device, providers, device_name, version = bench_utils.prepare(args, set())
    models = args.models or (["llama1b"] if device.type == "cuda" else ["tiny", "smollm2"])
    csv_path = bench_utils.results_path(args, device, "eval")
    rows, table = [], []
    for name, model, ids in bench_step.built_models(models, device):
        quiet = QuietStar(model, n_ahead=args.n_ahead, **ids)
        vocab = model.get_output_embeddings().weight.shape[0]
        for seq_len in args.seq_len:
            batch = torch.randint(1, vocab - 2, (args.batch, seq_len), device=device,
                                  generator=torch.Generator(device=device).manual_seed(seq_len))
            config = f"model={name}, batch={args.batch}, n={seq_len}, N={args.n_ahead}"
            for provider in providers:
                label = f"{provider} {config}"
                measured = bench_utils.measure(score_fn(quiet, provider, batch, device), device, args.repeats, label)
                if measured is None:
                    continue
                timing, peak = measured
                print(f"{label}: {timing[0]:.1f} ms, {peak:.1f} MB", flush=True)
                rows += bench_utils.time_and_memory_rows(
                    timing, peak, kernel="thinking_eval", provider=provider, mode="score", x_name="seq_len",
                    x_value=seq_len, config=config, device_name=device_name, library_version=version)
                table.append((f"{name} n={seq_len}", provider, timing[0], peak))
                bench_utils.write_csv(rows, csv_path)

    print(f"\n{'case':<16} {'provider':<15} {'ms':>10} {'peak MB':>9} {'speedup':>8}")
    reference = {case: ms for case, provider, ms, _ in table if provider == "reference"}
    for case, provider, ms, peak in table:
        speedup = f"{reference[case] / ms:.1f}x" if case in reference else "-"
        print(f"{case:<16} {provider:<15} {ms:>10.1f} {peak:>9.1f} {speedup:>8}")
    if rows:
        bench_utils.write_results(rows, csv_path, f"thinking evaluation ({device_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
