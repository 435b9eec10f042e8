"""A big model's Quiet-STaR training step within a memory budget, next to ``estimate_step_memory``'s prediction.

The default is the paper's setting on a Mistral-7B-shaped random model: bf16, LoRA rank 16 on every projection,
layer checkpointing, AdamW, B = 8, n = 256, N = 12, T = 4, P = 2, under an 80 GB budget
(``torch.cuda.set_per_process_memory_fraction`` on a bigger card). Two full steps run (forward, backward, optimizer
step); the second is measured: time, tokens/s and the peak of allocated memory, against the predicted total (weights,
optimizer state, the step's peak). ``--shape tiny`` runs the same on a small model (a CPU smoke run: the CPU has no
allocator statistics, so only the prediction and the time are recorded there).
Results: ``benchmarks/results/big_step_<tag>.csv``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402

from quietstar_fast import QuietStar, estimate_step_memory  # noqa: E402
from quietstar_fast.lora import add_lora  # noqa: E402

SHAPES = {  # Llama-architecture shapes (Mistral 7B's dimensions; its sliding window does not bind at n = 256)
    "mistral7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=32002),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=688, vocab_size=8192),
}


def build(shape: str, lora_rank: int, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                         eos_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if lora_rank:
        model = add_lora(model, lora_rank)
    return config, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mistral7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-ahead", type=int, default=12)
    parser.add_argument("--n-ahead-talk", type=int, default=4)
    parser.add_argument("--n-passes", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=16, help="0: train every weight")
    parser.add_argument("--checkpointing", choices=["layer", "none"], default="layer")
    parser.add_argument("--budget-gb", type=float, default=80.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    checkpointing = None if args.checkpointing == "none" else args.checkpointing
    sizes = dict(n_ahead=args.n_ahead, n_ahead_talk=args.n_ahead_talk, n_passes=args.n_passes)
    if on_gpu:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gb * 1e9 / total), device)
    config, model = build(args.shape, args.lora_rank, device, dtype)
    vocab = config.vocab_size
    quiet = QuietStar(model, start_token_id=vocab - 2, end_token_id=vocab - 1, init_token_id=5,
                      activation_checkpointing=checkpointing, **sizes)
    optimizer = torch.optim.AdamW([p for p in quiet.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(1, vocab - 2, (args.batch, args.seq_len), device=device, generator=generator)

    def step():
        quiet(ids, generator=generator).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer state is created here
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()
    if on_gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    measured_mb = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else float("nan")
    predicted = estimate_step_memory(config, args.batch, args.seq_len, dtype=dtype, checkpointing=checkpointing,
                                     lora_rank=args.lora_rank or None, device=device.type, **sizes)
    config_text = (f"shape={args.shape}, batch={args.batch}, n={args.seq_len}, N={args.n_ahead}, "
                   f"T={args.n_ahead_talk}, P={args.n_passes}, lora_rank={args.lora_rank}, "
                   f"checkpointing={args.checkpointing}, "
                   f"budget={args.budget_gb} GB, dtype={str(dtype).removeprefix('torch.')}, optimizer=adamw")
    common = dict(kernel="quietstar_step", provider="fast", mode="fwd_bwd_step", x_name="n", x_value=args.seq_len,
                  config=config_text, device_name=bench_utils.device_description(device),
                  library_version=bench_utils.versions())
    tokens_per_s = args.batch * args.seq_len / seconds
    rows = [bench_utils.csv_row(metric="time", unit="ms", values=(seconds * 1e3,) * 3, **common),
            bench_utils.csv_row(metric="tokens_per_s", unit="tokens/s", values=(tokens_per_s,) * 3, **common),
            bench_utils.csv_row(metric="peak_memory_allocated", unit="MB", values=(measured_mb,) * 3, **common),
            bench_utils.csv_row(metric="peak_memory_predicted", unit="MB", values=(predicted.total / 2**20,) * 3,
                                **common)]
    tag = args.tag or ("cpu" if not on_gpu else torch.cuda.get_device_name(device).replace(" ", "_"))
    path = args.out / f"big_step_{tag}.csv"
    bench_utils.write_csv(rows, path)
    print(f"{config_text}\nstep {seconds:.2f} s, {tokens_per_s:.1f} tokens/s, peak allocated {measured_mb:.0f} MB, "
          f"predicted {predicted.total / 2**20:.0f} MB (weights {predicted.weights / 2**20:.0f}, optimizer "
          f"{predicted.optimizer_state / 2**20:.0f}, step {predicted.step_peak / 2**20:.0f})\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
