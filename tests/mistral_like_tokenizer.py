"""A 300-token tokenizer that splits text the way Mistral's does, for the official test vector's tiny model.

The official eval code hard-codes Mistral-7B's token ids; the port derives them from any tokenizer. This one behaves
like Mistral's where the metric cares: a "▁" word-boundary marker prepended to the text (ids 0/1/2 = unk/bos/eos,
like Mistral's), every digit its own token with the space before a number a lone "▁" (Mistral's split digits), and
" A" .. " E" one token each ("▁A"). Everything else is one token per character. No download, no sentencepiece.
"""
from __future__ import annotations

import string

VOCAB_SIZE = 300  # the tiny model adds the two thought delimiters: 302
ANSWER_LETTERS = "ABCDE"


def _pieces() -> list[str]:
    specials = ["<unk>", "<s>", "</s>"]
    characters = sorted(set(string.ascii_letters + string.digits + string.punctuation) | {"\n"})
    letters = [f"▁{letter}" for letter in ANSWER_LETTERS]
    return specials + ["▁"] + characters + letters


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` with a vocabulary of ``VOCAB_SIZE`` (padded with unused pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    pieces = _pieces()
    pieces += [f"<unused{i}>" for i in range(VOCAB_SIZE - len(pieces))]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    merges = [("▁", letter) for letter in ANSWER_LETTERS]
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    try:
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    except TypeError:  # tokenizers < 0.19 (transformers 4.39, which runs the official code for the fixture)
        tokenizer.decoder = decoders.Metaspace(replacement="▁", add_prefix_space=True)
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
