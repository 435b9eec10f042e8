"""Pieces of the Quiet-STaR step schedule shared by the reference and the fast path."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class Rows:
    """The B*P rows of one call: ids, key padding (True = real token) and labels (pad -> -100, as official)."""

    ids: torch.Tensor  # (B', n)
    padding: torch.Tensor  # (B', n) bool
    labels: torch.Tensor  # (B', n)

    @property
    def count(self) -> int:
        return self.ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]


def make_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_passes: int, pad_token_id: int | None,
              labels: torch.Tensor | None = None) -> Rows:
    """``repeat_interleave`` keeps the P copies of an example next to each other: row = b * P + p. The labels are
    ``input_ids`` unless given; either way those equal to the pad id become -100, as the official model does to the
    labels its collator passes (a copy of ``input_ids``). Without a pad id only the attention mask ignores tokens."""
    ids = input_ids.repeat_interleave(n_passes, dim=0)
    labels = ids if labels is None else labels.repeat_interleave(n_passes, dim=0)
    if pad_token_id is not None:
        labels = labels.masked_fill(labels == pad_token_id, -100)
    return Rows(ids, attention_mask.repeat_interleave(n_passes, dim=0).bool(), labels)


def teacher_forced_ids(ids: torch.Tensor, shift: int, pad_token_id: int | None) -> torch.Tensor:
    """x_{i + shift} for every position i, padded with the pad id past the end (the official talk-phase inputs).
    The filler reaches only positions i >= n - shift, whose predictions the losses slice off, so without a pad id
    any token does: 0."""
    tail = ids.new_full((ids.shape[0], shift), 0 if pad_token_id is None else pad_token_id)
    return torch.cat([ids[:, shift:], tail], dim=1)


def base_for_talk_step(base_hidden: torch.Tensor, talk_step: int) -> torch.Tensor:
    """h_0[i + k - 1]: the base hidden state predicting the same target as talk step k (rolled, as the official
    code does; the wrapped tail is sliced off by the losses)."""
    return base_hidden.roll(-(talk_step - 1), dims=1) if talk_step > 1 else base_hidden


def new_cache():
    """A KV cache that keeps every step (no sliding-window cropping: the thought mask needs all stream keys) and can
    replay a checkpointed layer's update (``checkpointing.py``)."""
    from .checkpointing import step_cache_class

    return step_cache_class()()


def cache_kwarg(decoder) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def meta_embedding(parameter: torch.Tensor, scale: float, like: torch.Tensor) -> torch.Tensor:
    """The whole (B', n, D) input of the start/end step: scale * row 0 of the stored embedding, broadcast."""
    return (scale * parameter[0]).expand_as(like)
