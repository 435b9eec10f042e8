"""Evaluation of a ``QuietStar``: teacher-forced scoring with and without thoughts, the official GSM8K/CommonsenseQA
metric (the paper's table), chain-of-thought majority voting, and an lm-evaluation-harness model
(``quietstar_fast.eval.lm_eval_model``, which needs ``lm-eval``)."""
from .cot import CotResult, cot_majority_vote
from .data import load_examples
from .official import AnswerTokens, answer_probabilities, commonsense_qa_text, encode_eval_texts, gsm8k_text
from .positions import PositionScores, score_positions
from .scoring import TokenScores, logits_for, score_tokens
from .tasks import TASKS, TaskResult, evaluate_task, task_texts

__all__ = [
    "AnswerTokens",
    "CotResult",
    "PositionScores",
    "TASKS",
    "TaskResult",
    "TokenScores",
    "answer_probabilities",
    "commonsense_qa_text",
    "cot_majority_vote",
    "encode_eval_texts",
    "evaluate_task",
    "gsm8k_text",
    "load_examples",
    "logits_for",
    "score_positions",
    "score_tokens",
    "task_texts",
]
