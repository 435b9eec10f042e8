"""``QuietStarTrainer``: ``transformers.Trainer`` for a ``QuietStar`` model.

``Trainer`` already trains a ``QuietStar`` (its output is a ``ModelOutput`` carrying ``loss``; the batch's
``input_ids``, ``attention_mask`` and ``labels`` are ``forward``'s arguments). What it cannot do alone is checkpoint
one: a model that is not a ``PreTrainedModel`` gets its raw state dict written, which fails on tied embeddings and
is not a loadable model. This subclass writes each checkpoint with ``QuietStar.save_pretrained``, so that
``QuietStar.from_pretrained(checkpoint_dir)`` reloads it in one line, and resumes from such a checkpoint (and loads
the best one at the end) in place. It overrides the three hooks through which ``Trainer`` saves and loads weights.
"""
from __future__ import annotations

import os

import torch
from transformers import Trainer

from .quietstar import QuietStar
from .quietstar.saving import is_peft_model, load_into


class QuietStarTrainer(Trainer):
    """``Trainer(model=QuietStar(...), ...)`` whose checkpoints are ``QuietStar.save_pretrained`` directories."""

    def __init__(self, model: QuietStar, *args, **kwargs):
        if not isinstance(model, QuietStar):
            raise TypeError(f"QuietStarTrainer trains a QuietStar model, got {type(model).__name__}")
        if is_peft_model(model.model):  # save_pretrained refuses it: fail now, not at the first checkpoint
            raise ValueError("QuietStarTrainer checkpoints with QuietStar.save_pretrained, which needs merged weights: "
                             "a PEFT (LoRA) model cannot be checkpointed this way; train it with the example's loop "
                             "(examples/train_quietstar.py --lora) or save quiet.trainable_state_dict() yourself")
        super().__init__(model, *args, **kwargs)

    def _quietstar(self, model: torch.nn.Module | None = None) -> QuietStar:
        return self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        base_state = None if state_dict is None else {
            name.removeprefix("model."): value for name, value in state_dict.items() if name.startswith("model.")}
        self._quietstar().save_pretrained(output_dir, state_dict=base_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_into(self._quietstar(model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_into(self._quietstar(), self.state.best_model_checkpoint)
