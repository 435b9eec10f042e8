"""Benchmark thinking generation: a KV cache kept across tokens (QuietStar.generate) against the official inference's
method, tokens/s and peak memory.

Providers
  official  for every new token the whole sequence is re-run with a thought at every position, as the official
            inference does (no cache across tokens): this library's reference path (impl="reference": dense masks,
            full logits) with T = 1 and P = 1, and the next token from the mixed prediction at the last position
  cached    QuietStar.generate: one thought (N - 1 single-token steps) per new token on a cache kept across tokens

Both are greedy with N = 12 (thoughts sampled, as always). Models as in bench_step.py: on CPU tiny and smollm2, on a
GPU llama1b; a 64-token prompt, 64 new tokens, batch 1 and 8. tokens/s counts the generated tokens of all rows.
Each measurement is one run (after a 2-token warm-up): the official method takes minutes per run on a CPU.
Results: CSV (Liger's schema) and PNG under benchmarks/results/.
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
from quietstar_fast.quietstar.generate import mixed_next_token_logits  # noqa: E402

PROVIDERS = ("official", "cached")


@torch.no_grad()
def official_generate(quiet: QuietStar, prompt: torch.Tensor, new_tokens: int, generator: torch.Generator):
    """The official inference's cost model: each new token re-runs the thought loop over the whole sequence."""
    weight = quiet.model.get_output_embeddings().weight
    sequence = prompt
    for _ in range(new_tokens):
        out = quiet(sequence, generator=generator, output_hidden_states=True)
        base, after_thought = out.hidden_states[0][:, -1], out.hidden_states[-1][:, -1]
        logits = mixed_next_token_logits(quiet, base, after_thought, out.talk_weights[-1][:, -1], weight)
        sequence = torch.cat([sequence, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return sequence


def generate_fn(quiet: QuietStar, provider: str, prompt: torch.Tensor, new_tokens: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    quiet.impl = "reference" if provider == "official" else "fast"

    def run():
        if provider == "official":
            return official_generate(quiet, prompt, new_tokens, generator)
        return quiet.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None, generator=generator).sequences
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_args(parser, PROVIDERS, repeats=1)
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2", "llama1b"], default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--n-ahead", type=int, default=12)
    args = parser.parse_args(argv)

    device, providers, device_name, version = bench_utils.prepare(args, set())
    models = args.models or (["llama1b"] if device.type == "cuda" else ["tiny", "smollm2"])
    csv_path = bench_utils.results_path(args, device, "generate")
    rows, table = [], []
    for name, model, ids in bench_step.built_models(models, device):
        quiet = QuietStar(model.eval(), n_ahead=args.n_ahead, n_ahead_talk=1, n_passes=1, **ids).eval()
        vocab = model.get_output_embeddings().weight.shape[0]
        for batch in args.batch:
            prompt = torch.randint(1, vocab - 2, (batch, args.prompt_len), device=device,
                                   generator=torch.Generator(device=device).manual_seed(batch))
            config = (f"model={name}, batch={batch}, prompt={args.prompt_len}, new={args.new_tokens}, "
                      f"N={args.n_ahead}, greedy")
            for provider in providers:
                generate_fn(quiet, provider, prompt, 2, device)()  # warm-up
                try:
                    ms, peak = bench_utils.time_and_peak_once(
                        generate_fn(quiet, provider, prompt, args.new_tokens, device), device)
                except torch.OutOfMemoryError:
                    print(f"{provider} {config}: out of memory")
                    continue
                tokens_per_s = batch * args.new_tokens / (ms * 1e-3)
                print(f"{provider} {config}: {tokens_per_s:.2f} tokens/s, {peak:.1f} MB", flush=True)
                common = dict(kernel="thinking_generation", provider=provider, mode="generate", x_name="batch",
                              x_value=batch, config=config, device_name=device_name, library_version=version)
                rows += [bench_utils.csv_row(metric="tokens_per_s", unit="tokens/s", values=(tokens_per_s,) * 3,
                                             **common),
                         bench_utils.csv_row(metric="time_per_token", unit="ms", values=(ms / args.new_tokens,) * 3,
                                             **common),
                         bench_utils.csv_row(metric="peak_memory", unit="MB", values=(peak,) * 3, **common)]
                table.append((f"{name} B={batch}", provider, tokens_per_s, peak))
                bench_utils.write_csv(rows, csv_path)

    print(f"\n{'model':<16} {'provider':<9} {'tokens/s':>10} {'peak MB':>9} {'speedup':>8}")
    official = {name: tps for name, provider, tps, _ in table if provider == "official"}
    for name, provider, tps, peak in table:
        speedup = f"{tps / official[name]:.1f}x" if name in official else "-"
        print(f"{name:<16} {provider:<9} {tps:>10.2f} {peak:>9.1f} {speedup:>8}")
    if rows:  # the CSV is already written after each measurement
        plot_path = csv_path.with_suffix(".png")
        if bench_utils.plot(rows_per_model(rows), plot_path, f"thinking generation ({device_name})"):
            print(f"wrote {csv_path}, {plot_path}")
    return 0


def rows_per_model(rows: list[dict]) -> list[dict]:
    """The rows with the model in the provider's name, so the plot draws one line per model and provider."""
    return [{**row, "kernel_provider": f"{row['kernel_provider']} {row['extra_benchmark_config_str'].split(',')[0]}"}
            for row in rows]


if __name__ == "__main__":
    sys.exit(main())
