"""Zero-shot chain-of-thought majority voting on GSM8K, as the official ``zero-shotcot-eval.py`` runs it, on top of
``QuietStar.generate`` (thinking before every generated token; the thought delimiters are never emitted).

Per question and vote: "Q: <question>\\nA: Let's think step by step.", up to 384 sampled tokens (temperature 0.9),
cut where "Q:" or "\\n\\n\\n" appears a second time (the official stop strings) or at eos/bos/pad; then the text, right-
stripped, plus "\\nTherefore, the answer (arabic numerals) is" and 12 more tokens; the vote is the first integer after
that phrase (commas removed). The majority over the votes (the first seen wins a tie, an unparsable vote counts as
None) is compared with the first integer after "#### " in the reference answer. All votes of a question run as one
batch.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

COT_PROMPT = "\nA: Let's think step by step."
FINAL_ANSWER_TEXT = "\nTherefore, the answer (arabic numerals) is"
STOP_STRINGS = ("Q:", "\n\n\n")


def first_integer(text: str) -> int | None:
    """The first integer in ``text`` with commas removed (the official ``extract_first_integer``)."""
    match = re.search(r"\d+", text.replace(",", ""))
    return int(match.group()) if match else None


def cut_at_repeated_stop(text: str) -> str:
    """The text before the second occurrence of the first stop string that occurs twice (official order)."""
    for stop in STOP_STRINGS:
        if text.count(stop) > 1:
            first = text.index(stop)
            return text[:text.index(stop, first + len(stop))]
    return text


@dataclass
class CotResult:
    accuracy: float
    predictions: list[int | None]
    answers: list[int | None]
    votes: list[list[int | None]] = field(repr=False)
    texts: list[list[str]] = field(repr=False)


def _generate_text(quiet, tokenizer, texts: list[str], max_new_tokens: int, temperature: float,
                   generator: torch.Generator | None) -> list[str]:
    """Sample continuations of ``texts`` (one batch, left-padded); return prompt + continuation, decoded."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = quiet.model.get_output_embeddings().weight.device
    stops = [token for token in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id)
             if token is not None]
    out = quiet.generate(batch.input_ids.to(device), batch.attention_mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                         eos_token_id=list(dict.fromkeys(stops)) or None, generator=generator)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out.sequences]


def cot_majority_vote(quiet, tokenizer, examples: Sequence[dict], *, votes: int = 8, temperature: float = 0.9,
                      max_new_tokens: int = 384, answer_tokens: int = 12, prompt: str = COT_PROMPT,
                      final_answer_text: str = FINAL_ANSWER_TEXT,
                      generator: torch.Generator | None = None) -> CotResult:
    """GSM8K maj@``votes`` accuracy of ``quiet`` over ``examples`` ({"question", "answer"}); ``temperature=0`` is
    greedy (then every vote is the same)."""
    if votes < 1:
        raise ValueError(f"votes must be at least 1, got {votes}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token (the official script sets pad = eos)")
    predictions, answers, all_votes, all_texts = [], [], [], []
    for example in examples:
        question = "Q: " + example["question"] + prompt
        reasoning = _generate_text(quiet, tokenizer, [question] * votes, max_new_tokens, temperature, generator)
        finals = [cut_at_repeated_stop(text).rstrip() + final_answer_text for text in reasoning]
        texts = _generate_text(quiet, tokenizer, finals, answer_tokens, temperature, generator)
        vote_values = [first_integer(text.split(final_answer_text)[-1]) for text in texts]
        predictions.append(Counter(vote_values).most_common(1)[0][0])
        answers.append(first_integer(example["answer"].split("#### ")[-1]))
        all_votes.append(vote_values)
        all_texts.append(texts)
    correct = sum(p == a for p, a in zip(predictions, answers))  # official: None == None counts
    return CotResult(correct / max(len(examples), 1), predictions, answers, all_votes, all_texts)
