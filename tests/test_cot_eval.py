"""Chain-of-thought majority voting (the official zero-shotcot-eval.py protocol) on QuietStar.generate."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers", reason="needs transformers")

from mistral_like_tokenizer import build_tokenizer  # noqa: E402
from test_official_eval import SAMPLES, official_model  # noqa: E402

from quietstar_fast.eval import cot_majority_vote, load_examples  # noqa: E402
from quietstar_fast.eval.cot import FINAL_ANSWER_TEXT, cut_at_repeated_stop, first_integer  # noqa: E402


def test_first_integer_is_the_official_extraction():
    assert first_integer(" 1,500 stamps, not 7") == 1500
    assert first_integer(" $12.50") == 12
    assert first_integer(" no number") is None


def test_the_text_is_cut_at_the_second_stop_string():
    assert cut_at_repeated_stop("Q: a\nA: think.\nQ: next") == "Q: a\nA: think.\n"
    assert cut_at_repeated_stop("Q: a\nA: x\n\n\ny\n\n\nz") == "Q: a\nA: x\n\n\ny"
    assert cut_at_repeated_stop("Q: a\nA: x") == "Q: a\nA: x"


class ScriptedModel:
    """Stands in for a QuietStar: ``generate`` appends the next scripted continuation to each row."""

    def __init__(self, tokenizer, continuations):
        self.tokenizer, self.continuations = tokenizer, iter(continuations)
        self.model = SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=torch.zeros(1)))
        self.calls = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append((input_ids, kwargs))
        rows = []
        for row, mask in zip(input_ids, attention_mask):
            text = self.tokenizer.decode(row[mask.bool()], skip_special_tokens=True) + next(self.continuations)
            rows.append(self.tokenizer.encode(text))
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        return SimpleNamespace(sequences=torch.tensor([[pad] * (width - len(r)) + r for r in rows]))


def test_the_majority_of_the_votes_is_scored():
    tokenizer = build_tokenizer()
    reasoning = [" 3 + 4 = 7.\nQ: a new question", " it is 7", " maybe 8"]
    finals = [" 7.", " 7", " 8"]
    scripted = ScriptedModel(tokenizer, reasoning + finals)
    result = cot_majority_vote(scripted, tokenizer, [{"question": "3 + 4?", "answer": "3 + 4 = 7\n#### 7"}],
                               votes=3, temperature=0.9, max_new_tokens=5, answer_tokens=2)
    assert result.votes == [[7, 7, 8]] and result.predictions == [7] and result.answers == [7]
    assert result.accuracy == 1.0
    (first_prompts, first_kwargs), (final_prompts, final_kwargs) = scripted.calls
    assert first_kwargs["max_new_tokens"] == 5 and first_kwargs["do_sample"] and first_kwargs["temperature"] == 0.9
    assert final_kwargs["max_new_tokens"] == 2
    final_texts = [tokenizer.decode(row, skip_special_tokens=True) for row in final_prompts]
    # the second "Q:" and what follows are cut before the final-answer phrase is appended
    assert final_texts[0].endswith("3 + 4 = 7." + FINAL_ANSWER_TEXT)
    assert all(text.startswith("Q: 3 + 4?\nA: Let's think step by step.") for text in final_texts)


def test_a_tie_goes_to_the_first_vote_and_unparsable_votes_count():
    tokenizer = build_tokenizer()
    scripted = ScriptedModel(tokenizer, ["", "", "", " none", " 5", " none"])
    result = cot_majority_vote(scripted, tokenizer, [{"question": "q", "answer": "#### 5"}], votes=3,
                               max_new_tokens=1, answer_tokens=1)
    assert result.votes == [[None, 5, None]] and result.predictions == [None] and result.accuracy == 0.0


def test_it_runs_on_a_thinking_model():
    """End to end on the official test vector's tiny model: greedy votes agree, sampled ones come from the
    generator (reproducible)."""
    quiet, tokenizer = official_model(), build_tokenizer()
    examples = load_examples("gsm8k", SAMPLES["gsm8k"], limit=2)
    greedy = cot_majority_vote(quiet, tokenizer, examples, votes=2, temperature=0, max_new_tokens=4,
                               answer_tokens=3)
    assert all(len(set(texts)) == 1 for texts in greedy.texts)
    assert greedy.answers == [7, 12]
    runs = [cot_majority_vote(quiet, tokenizer, examples, votes=2, max_new_tokens=4, answer_tokens=3,
                              generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert runs[0].texts == runs[1].texts
    assert all(FINAL_ANSWER_TEXT in text for texts in runs[0].texts for text in texts)


def test_votes_must_be_positive():
    with pytest.raises(ValueError, match="votes"):
        cot_majority_vote(official_model(), build_tokenizer(), [], votes=0)
