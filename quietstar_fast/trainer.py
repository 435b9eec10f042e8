"""``QuietStarTrainer``: ``transformers.Trainer`` for a ``QuietStar`` model.

``Trainer`` already trains a ``QuietStar`` (its output is a ``ModelOutput`` carrying ``loss``; the batch's
``input_ids``, ``attention_mask`` and ``labels`` are ``forward``'s arguments). What it cannot do alone is checkpoint
one: a model that is not a ``PreTrainedModel`` gets its raw state dict written, which fails on tied embeddings and
is not a loadable model. This subclass writes each checkpoint with ``QuietStar.save_pretrained``, so that
``QuietStar.from_pretrained(checkpoint_dir)`` reloads it in one line, and resumes from such a checkpoint.
"""
from __future__ import annotations

import os

import torch
from transformers import Trainer

from .quietstar import QuietStar
from .quietstar.saving import CONFIG_NAME


class QuietStarTrainer(Trainer):
    """``Trainer(model=QuietStar(...), ...)`` whose checkpoints are ``QuietStar.save_pretrained`` directories."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        quiet = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(quiet, QuietStar):
            raise TypeError(f"QuietStarTrainer trains a QuietStar model, got {type(quiet).__name__}")
        if not self.args.should_save:
            return
        quiet.save_pretrained(output_dir, state_dict=None if state_dict is None else {
            name.removeprefix("model."): value for name, value in state_dict.items() if name.startswith("model.")})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        quiet = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if not os.path.isfile(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            raise FileNotFoundError(f"{resume_from_checkpoint} is not a QuietStarTrainer checkpoint (no {CONFIG_NAME})")
        saved = QuietStar.from_pretrained(resume_from_checkpoint, dtype=quiet.model.dtype)
        quiet.load_state_dict(saved.state_dict())
