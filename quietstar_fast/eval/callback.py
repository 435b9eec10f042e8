"""``OfficialEvalCallback``: the official GSM8K/CommonsenseQA metric, with and without thoughts, every k training
steps, as the official training evaluated every 10 steps (``eval_and_logging_steps``)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from transformers import TrainerCallback

from .tasks import TASKS, evaluate_task


class OfficialEvalCallback(TrainerCallback):
    """Evaluate the trainer's ``QuietStar`` on ``examples`` ({task: examples}, tasks "gsm8k" / "commonsense_qa") every
    ``every_n_steps`` optimizer steps and log ``official_<task>_with_thoughts`` / ``_without_thoughts`` through the
    trainer (its loggers: TensorBoard, W&B, ``state.log_history``); also kept in ``history``. Only the main process
    evaluates. Thoughts are drawn from ``seed`` + step, so a rerun logs the same numbers.

        trainer = QuietStarTrainer(model=quiet, args=args, ...)
        trainer.add_callback(OfficialEvalCallback(trainer, tokenizer, {"gsm8k": load_examples("gsm8k", path)}))
    """

    def __init__(self, trainer, tokenizer, examples: Mapping[str, Sequence[dict]], *, every_n_steps: int = 10,
                 batch_size: int = 8, seed: int = 0):
        unknown = set(examples) - set(TASKS)
        if unknown:
            raise ValueError(f"examples has unknown tasks {sorted(unknown)}: the tasks are {TASKS}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.trainer, self.tokenizer, self.examples = trainer, tokenizer, dict(examples)
        self.every_n_steps, self.batch_size, self.seed = every_n_steps, batch_size, seed
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps or not self.trainer.is_world_process_zero():
            return
        quiet = self.trainer.accelerator.unwrap_model(self.trainer.model, keep_torch_compile=False)
        device = quiet.model.get_output_embeddings().weight.device
        metrics = {}
        for task, examples in self.examples.items():
            generator = torch.Generator(device=device).manual_seed(self.seed + state.global_step)
            result = evaluate_task(quiet, self.tokenizer, task, examples, batch_size=self.batch_size,
                                   generator=generator)
            metrics[f"official_{task}_with_thoughts"] = result.with_thoughts
            metrics[f"official_{task}_without_thoughts"] = result.without_thoughts
        self.history.append({"step": state.global_step, **metrics})
        self.trainer.log(metrics)
