"""The paper's table for a saved Quiet-STaR model: GSM8K and CommonsenseQA with and without thoughts, by the official
metric (quietstar_fast.eval), and optionally GSM8K chain-of-thought majority voting.

    python examples/evaluate.py --model checkpoints/quietstar/checkpoint-20          # a QuietStar.save_pretrained dir
    python examples/evaluate.py --model DIR --gsm8k gsm8k_test.jsonl --csqa csqa_validation.jsonl --batch-size 16
    python examples/evaluate.py --model DIR --hub                                   # the official splits (datasets)
    python examples/evaluate.py --model DIR --cot --votes 8 --limit 128             # + CoT maj@8, as the paper

The directory must hold the tokenizer too (``QuietStarTrainer`` checkpoints of examples/train_quietstar.py --trainer
do), or pass ``--tokenizer``. Data: the datasets' own JSONL/Parquet files, the Hub splits the official code evaluates
(``--hub``, needs ``datasets``), or by default the few problems bundled in examples/data (a smoke run, not a
measurement). The metric is the official one: the expected probability of the whole answer, each answer token's
probability renormalised over the allowed tokens (digits / A-E, and newline), averaged over the questions.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from quietstar_fast import QuietStar
from quietstar_fast.eval import cot_majority_vote, evaluate_task, load_examples

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLES = {"gsm8k": DATA_DIR / "gsm8k_sample.jsonl", "commonsense_qa": DATA_DIR / "commonsense_qa_sample.jsonl"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a QuietStar.save_pretrained directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    parser.add_argument("--gsm8k", type=Path, help="GSM8K .jsonl/.parquet (default: the bundled sample)")
    parser.add_argument("--csqa", type=Path, help="CommonsenseQA .jsonl/.parquet (default: the bundled sample)")
    parser.add_argument("--hub", action="store_true", help="the official splits from the Hub (needs datasets)")
    parser.add_argument("--limit", type=int, help="first N questions of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kernel-impl", default="auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="draws the thoughts")
    parser.add_argument("--cot", action="store_true", help="also GSM8K zero-shot CoT maj@k (official script)")
    parser.add_argument("--votes", type=int, default=8)
    parser.add_argument("--cot-tokens", type=int, default=384, help="reasoning tokens per vote (official: 384)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    quiet = QuietStar.from_pretrained(args.model, kernel_impl=args.kernel_impl, dtype=DTYPES[args.dtype])
    quiet = quiet.to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    config = quiet.quietstar_config
    print(f"model: {args.model} ({sum(p.numel() for p in quiet.parameters()) / 1e6:.0f}M parameters, "
          f"N={config.n_ahead}: {config.num_thought_tokens} thought tokens per position), {args.device}, "
          f"{args.dtype}")
    files = {"gsm8k": args.gsm8k, "commonsense_qa": args.csqa}
    results = []
    for task in ("gsm8k", "commonsense_qa"):
        path = None if args.hub and files[task] is None else (files[task] or SAMPLES[task])
        examples = load_examples(task, path, limit=args.limit)
        start = time.perf_counter()
        result = evaluate_task(quiet, tokenizer, task, examples, batch_size=args.batch_size,
                               generator=torch.Generator(device=args.device).manual_seed(args.seed))
        source = "hub" if path is None else os.path.relpath(path)
        results.append({**result.row(), "source": source, "seconds": time.perf_counter() - start})
    if args.cot:
        examples = load_examples("gsm8k", None if args.hub and args.gsm8k is None else (args.gsm8k or
                                                                                       SAMPLES["gsm8k"]),
                                 limit=args.limit)
        start = time.perf_counter()
        cot = cot_majority_vote(quiet, tokenizer, examples, votes=args.votes, max_new_tokens=args.cot_tokens,
                                generator=torch.Generator(device=args.device).manual_seed(args.seed))
        results.append({"task": f"gsm8k CoT maj@{args.votes} (accuracy)", "questions": len(examples),
                        "with_thoughts": cot.accuracy, "without_thoughts": None, "seconds":
                        time.perf_counter() - start})

    print(f"\n| {'task':<26} | {'questions':>9} | {'without thoughts':>16} | {'with thoughts':>13} | {'s':>6} |")
    print(f"|{'-' * 28}|{'-' * 10}:|{'-' * 17}:|{'-' * 14}:|{'-' * 7}:|")
    for row in results:
        without = "-" if row["without_thoughts"] is None else f"{row['without_thoughts']:.4f}"
        print(f"| {row['task']:<26} | {row['questions']:>9} | {without:>16} | {row['with_thoughts']:>13.4f} | "
              f"{row['seconds']:>6.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
