"""The official teacher-forced evaluation of a ``QuietStar`` on GSM8K or CommonsenseQA: the paper's table."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .official import (
    MAX_LENGTH, AnswerTokens, answer_probabilities, commonsense_qa_text, encode_eval_texts, gsm8k_text, scored_tokens,
)
from .positions import score_positions
from .scoring import logits_for

TASKS = ("gsm8k", "commonsense_qa")


def task_texts(task: str, examples: Sequence[dict]) -> list[str]:
    """The official eval texts of ``examples`` (fields as ``load_examples`` returns them)."""
    if task == "gsm8k":
        return [gsm8k_text(example["question"], example["answer"]) for example in examples]
    if task == "commonsense_qa":
        return [commonsense_qa_text(example["question"], example["choices"], example["answerKey"])
                for example in examples]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


@dataclass
class TaskResult:
    """The official metric with and without thoughts (means of the per-question answer probabilities, (Q,))."""

    task: str
    with_thoughts: float
    without_thoughts: float
    per_question_with_thoughts: torch.Tensor
    per_question_without_thoughts: torch.Tensor

    def row(self) -> dict:
        return {"task": self.task, "questions": len(self.per_question_with_thoughts),
                "without_thoughts": self.without_thoughts, "with_thoughts": self.with_thoughts}


def evaluate_task(quiet, tokenizer, task: str, examples: Sequence[dict], *, batch_size: int = 8,
                  max_length: int = MAX_LENGTH, restrict: bool = True, generator: torch.Generator | None = None,
                  rng: random.Random | None = None) -> TaskResult:
    """Score ``examples`` as the official ``Trainer.evaluate`` + ``compute_metrics`` do, on ``quiet``'s device.

    The official eval forward thinks at every position; only the answer positions' predictions enter the metric,
    so the thoughts run there alone (``score_positions``: the same numbers). Each batch is cut to its longest
    question (the columns after it are padding, which no real position attends to), so the numbers are those of the
    official max_length padding. ``generator`` draws the thoughts; ``rng`` the official random window of a text
    longer than ``max_length``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    input_ids, attention_mask = encode_eval_texts(tokenizer, task_texts(task, examples), max_length, rng)
    answer_tokens = AnswerTokens.from_tokenizer(tokenizer)
    weight = quiet.model.get_output_embeddings().weight
    device = weight.device
    with_thoughts, without_thoughts = [], []
    for start in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        width = int(mask.sum(dim=1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        pairs = [(row, factor.position) for row, row_ids in enumerate(ids.tolist())
                 for factor in scored_tokens(tokenizer, row_ids, answer_tokens, restrict)]
        index = {pair: k for k, pair in enumerate(pairs)}
        rows, positions = (torch.tensor([pair[i] for pair in pairs], dtype=torch.long) for i in (0, 1))
        scores = score_positions(quiet, ids.to(device), mask.to(device), rows, positions, generator=generator)
        for hidden, results in ((scores.thought_hidden, with_thoughts), (scores.base_hidden, without_thoughts)):
            def logits_at(row, row_positions, token_ids, hidden=hidden):
                picked = torch.tensor([index[(row, p)] for p in row_positions.tolist()], device=device)
                return logits_for(hidden[picked], weight, token_ids)
            results.append(answer_probabilities(tokenizer, ids, logits_at, answer_tokens, restrict))
    with_thoughts, without_thoughts = torch.cat(with_thoughts), torch.cat(without_thoughts)
    return TaskResult(task, float(with_thoughts.mean()), float(without_thoughts.mean()), with_thoughts,
                      without_thoughts)
