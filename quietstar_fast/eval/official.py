"""The official Quiet-STaR evaluation's prompts and metric (``eval_helpers.py`` of ezelikman/quiet-star), for any
tokenizer.

The official metric is not exact match: for each question it multiplies, over the answer's tokens, the probability of
the true token renormalised over the allowed tokens (digits and newline for GSM8K, " A" .. " E" and newline for
CommonsenseQA), and averages that product over the questions: an expected probability of the whole answer. The
official code hard-codes Mistral-7B's ids of those tokens; ``AnswerTokens.from_tokenizer`` derives them from the
tokenizer (on a tokenizer that splits text as Mistral's does they are the same pieces, which
``tests/test_official_eval.py`` checks against the official functions).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

ANSWER_MARKER = "\nA:"
ANSWER_LETTERS = "ABCDE"
MAX_LENGTH = 256  # the official eval length


def gsm8k_text(question: str, answer: str) -> str:
    """The official GSM8K eval text: the question, the marker and the final answer (after "####"), one line."""
    return "Q: " + question + ANSWER_MARKER + answer.split("####")[-1] + "\n"


def commonsense_qa_text(question: str, choices: dict, answer_key: str) -> str:
    """The official CommonsenseQA eval text: the question, "(A) text" per choice, the marker and " <letter>"."""
    choice_lines = "\n".join(f"({label}) {text}" for label, text in zip(choices["label"], choices["text"]))
    return f"Q: {question}\n{choice_lines}{ANSWER_MARKER} {answer_key}\n"


def encode_eval_texts(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH,
                      rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize as the official preprocessing does: the tokenizer's special tokens (BOS), right-padded with the pad id
    to ``max_length``; a longer text is cut to a random window of ``max_length`` tokens (official; ``rng`` draws it).
    Returns (input_ids, attention_mask), both (len(texts), max_length)."""
    pad = pad_id(tokenizer)
    rng = rng or random.Random(0)
    rows = []
    for text in texts:
        ids = tokenizer.encode(text)
        if len(ids) > max_length:
            start = rng.randint(0, len(ids) - max_length)
            ids = ids[start:start + max_length]
        rows.append(ids + [pad] * (max_length - len(ids)))
    input_ids = torch.tensor(rows, dtype=torch.long)
    return input_ids, (input_ids != pad).long()


def pad_id(tokenizer) -> int:
    """The official eval pads with the eos id (``pad_token_id = eos_token_id``) unless the tokenizer has a pad."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
    return pad


@dataclass(frozen=True)
class ScoredToken:
    """One factor of the official product: the logits at ``position`` predict ``token``, renormalised over
    ``allowed`` (None: the whole vocabulary)."""

    position: int
    token: int
    allowed: tuple[int, ...] | None


@dataclass(frozen=True)
class AnswerTokens:
    """The allowed ids of the official metric: ``numbers`` for numeric answers, ``letters`` for choice answers (both
    include the newline that ends the answer)."""

    numbers: tuple[int, ...]
    letters: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "AnswerTokens":
        """Derive the ids from how the tokenizer writes the official answers.

        Newline: the last token of an answer line. Letters: the token holding the letter in "... A: X\\n" for X in
        A-E. Numbers: every vocabulary token made of digits only, plus, when the tokenizer attaches the space before
        a number to its first digits (GPT-2 style "Ġ72"), those digit tokens with that prefix.
        """
        letter_ids, newline = [], None
        for letter in ANSWER_LETTERS:
            ids = tokenizer.encode(commonsense_qa_text("q", {"label": [letter], "text": ["t"]}, letter))
            answer = ids[_marker_end(tokenizer, ids) + 1:]
            holding = [token for token in answer if letter in tokenizer.decode([token])]
            if len(holding) != 1 or answer[-1] == holding[0]:
                raise ValueError(f"cannot find the answer token of {letter!r} in the tokenizer's encoding of an "
                                 f"official CommonsenseQA text ({tokenizer.convert_ids_to_tokens(answer)})")
            letter_ids.append(holding[0])
            newline = answer[-1]
        ids = tokenizer.encode(gsm8k_text("q", "#### 7"))
        answer = ids[_marker_end(tokenizer, ids) + 1:]
        first_digit = next(tokenizer.convert_ids_to_tokens(token) for token in answer
                           if "7" in tokenizer.decode([token]))
        space_prefix = first_digit[:first_digit.index("7")]
        numbers = [token for piece, token in tokenizer.get_vocab().items()
                   if _is_digits(piece) or (space_prefix and piece.startswith(space_prefix)
                                            and _is_digits(piece[len(space_prefix):]))]
        return cls(numbers=tuple(sorted(numbers)) + (newline,), letters=tuple(letter_ids) + (newline,))


def _is_digits(piece: str) -> bool:
    return bool(piece) and all(character in string.digits for character in piece)


def _marker_end(tokenizer, ids: Sequence[int], pad: int | None = None) -> int:
    """The index of the token that completes the last answer marker, found as the official code does: drop tokens
    from the end (skipping pads) until the decoded prefix holds one marker fewer."""
    markers = tokenizer.decode(ids).count(ANSWER_MARKER)
    for end in range(len(ids) - 1, 0, -1):
        if pad is not None and ids[end - 1] == pad:
            continue
        if tokenizer.decode(ids[:end]).count(ANSWER_MARKER) < markers:
            return end
    raise ValueError("the text holds no answer marker '\\nA:'")


def scored_tokens(tokenizer, ids: Sequence[int], answer_tokens: AnswerTokens,
                  restrict: bool = True) -> list[ScoredToken]:
    """The factors of one question's official answer probability (``compute_metrics`` with
    ``filter_numbers=restrict``): the tokens after the last marker up to the first pad, numeric answers skipping
    their first token when it holds no digit (Mistral's lone space before a number), and with ``restrict`` only the
    allowed tokens, each renormalised over the allowed set."""
    ids = [int(token) for token in ids]
    pad = pad_id(tokenizer)
    after_marker = tokenizer.decode(ids).split(ANSWER_MARKER)[-1]
    numeric = len(after_marker) > 1 and after_marker[1].isdigit()
    allowed = answer_tokens.numbers if numeric else answer_tokens.letters
    marker_end = _marker_end(tokenizer, ids, pad)
    first = marker_end
    if numeric and marker_end + 1 < len(ids) and not any(character.isdigit()
                                                          for character in tokenizer.decode([ids[marker_end + 1]])):
        first += 1
    factors = []
    for position in range(first, len(ids) - 1):
        token = ids[position + 1]
        if token == pad:
            break
        if restrict and token not in allowed:
            continue
        factors.append(ScoredToken(position, token, allowed if restrict else None))
    return factors


LogitsAt = Callable[[int, torch.Tensor, torch.Tensor | None], torch.Tensor]


def answer_probabilities(tokenizer, input_ids: torch.Tensor, logits_at: LogitsAt,
                         answer_tokens: AnswerTokens | None = None, restrict: bool = True) -> torch.Tensor:
    """(B,) float64: each question's official answer probability (1 when no token is scored, as official).

    ``logits_at(row, positions (k,), ids (A,) or None)`` gives the (k, A) logits of ``row`` at ``positions`` over
    ``ids`` (None: the whole vocabulary), e.g. from ``TokenScores`` through ``logits_for``.
    """
    answer_tokens = answer_tokens or AnswerTokens.from_tokenizer(tokenizer)
    probabilities = []
    for row, ids in enumerate(input_ids.tolist()):
        factors = scored_tokens(tokenizer, ids, answer_tokens, restrict)
        log_probability = torch.zeros((), dtype=torch.float64)
        for allowed in {factor.allowed for factor in factors}:
            group = [factor for factor in factors if factor.allowed == allowed]
            positions = torch.tensor([factor.position for factor in group])
            allowed_ids = None if allowed is None else torch.tensor(allowed)
            logits = logits_at(row, positions, allowed_ids).double()
            columns = torch.tensor([factor.token if allowed is None else allowed.index(factor.token)
                                    for factor in group])
            log_probability = log_probability + logits.log_softmax(-1).gather(1, columns[:, None].to(
                logits.device)).sum().cpu()
        probabilities.append(log_probability.exp())
    return torch.stack(probabilities) if probabilities else torch.zeros(0, dtype=torch.float64)
