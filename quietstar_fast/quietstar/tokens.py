"""The thought delimiter tokens, added to a model and tokenizer as the official code adds them."""
from __future__ import annotations

from dataclasses import dataclass

START_THOUGHT, END_THOUGHT = "<|startthought|>", "<|endthought|>"
INIT_TEXT = "---"  # the official code initialises both delimiter embeddings from the first token of "---"


@dataclass(frozen=True)
class ThoughtTokenIds:
    start: int
    end: int
    init: int
    pad: int | None  # None when the tokenizer has neither a pad nor an eos token


def add_thought_tokens(model, tokenizer) -> ThoughtTokenIds:
    """Add <|startthought|> and <|endthought|> as special tokens and grow the model's embeddings (and an untied LM
    head) by their rows, initialised like the official code's ``resize_token_embeddings`` (normal(0, init std), no
    mean resizing). Returns their ids, the initialising token id and the pad id (pad, else eos)."""
    tokenizer.add_special_tokens({"additional_special_tokens": [START_THOUGHT, END_THOUGHT]})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    start, end = tokenizer.convert_tokens_to_ids([START_THOUGHT, END_THOUGHT])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ThoughtTokenIds(start, end, tokenizer.encode(INIT_TEXT, add_special_tokens=False)[0], pad)
