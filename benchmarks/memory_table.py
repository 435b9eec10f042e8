"""What fits on one GPU: ``estimate_step_memory`` for public model shapes, with and without layer checkpointing and
LoRA, at the paper's Quiet-STaR sizes (N = 12, T = 4, P = 2, B = 1) in bf16 with AdamW.

The shapes are the models' published configs (no weights are downloaded; the step runs on the meta device). A step
fits a GPU when total * 1.1 + 1 GiB (the caching allocator's rounding and fragmentation, the CUDA context and
workspaces, which the estimate does not model) is at most its memory. Writes ``benchmarks/results/memory_table.csv``
and prints the Markdown table that ``docs/memory.md`` carries.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402

from quietstar_fast import estimate_step_memory  # noqa: E402

GIB = 2**30
GPUS_GB = (24, 40, 80, 141)
THOUGHT_TOKENS = 2  # <|startthought|> and <|endthought|> join the vocabulary
# Published configs (config.json of each model on the Hugging Face Hub), reduced to what sets the memory.
SHAPES = {
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True),
    "Llama-3.2-3B": dict(model_type="llama", hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True),
    "Mistral-7B": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, intermediate_size=14336, vocab_size=32000,
                       tie_word_embeddings=False, sliding_window=None),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, head_dim=128, intermediate_size=18944, vocab_size=152064,
                       tie_word_embeddings=False, use_sliding_window=False),
}


def model_config(name: str):
    from transformers import AutoConfig

    fields = dict(SHAPES[name])
    fields["vocab_size"] += THOUGHT_TOKENS
    return AutoConfig.for_model(fields.pop("model_type"), max_position_embeddings=8192, **fields)


def fits(total_bytes: int, gpu_gb: int) -> bool:
    return total_bytes * 1.1 + GIB <= gpu_gb * 1e9


def _merged_with_other_models(path: Path, rows: list[dict], models: set[str]) -> list[dict]:
    """The rows of this run plus, from an earlier CSV, those of models this run left out (each estimate takes
    up to a minute on a CPU, so a run may cover one model)."""
    if not path.exists():
        return rows
    with open(path, newline="") as handle:
        kept = [row for row in csv.DictReader(handle) if row["model"] not in models]
    order = list(SHAPES)
    return sorted(kept + rows, key=lambda row: order.index(row["model"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        config = model_config(name)
        for seq_len in args.seq_len:
            for lora in (None, args.lora_rank):
                for checkpointing in (None, "layer"):
                    memory = estimate_step_memory(config, 1, seq_len, dtype=torch.bfloat16,
                                                  checkpointing=checkpointing, lora_rank=lora)
                    row = dict(model=name, n=seq_len, lora=f"r{lora}" if lora else "none",
                               checkpointing=checkpointing or "none",
                               **{f"{field}_gib": f"{getattr(memory, field) / GIB:.2f}"
                                  for field in ("weights", "gradients", "optimizer_state", "kv_cache", "step_peak",
                                                "total")},
                               fits=" ".join(f"{gb}" for gb in GPUS_GB if fits(memory.total, gb)) or "-")
                    print(row, flush=True)
                    rows.append(row)
    path = args.out / "memory_table.csv"
    rows = _merged_with_other_models(path, rows, set(args.models))
    bench_utils.write_csv(rows, path, fieldnames=list(rows[0]))
    print(f"wrote {path}\n")
    print("| model | n | LoRA | checkpointing | weights | optimizer | step peak | total | fits on (GB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['n']} | {row['lora']} | {row['checkpointing']} | {row['weights_gib']} | "
              f"{row['optimizer_state_gib']} | {row['step_peak_gib']} | {row['total_gib']} | {row['fits']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
