"""Thinking scores at chosen positions only: what the official metric and lm-eval's log-likelihoods read.

The official eval forward thinks at every position of every row, but its metric reads the mixed prediction at a
handful of answer positions. A position's thought sees only the prefix up to it and its own stream, so the
with-thought prediction at position p is computed exactly by: the base model over the rows once (step 0, with a KV
cache), then, for each chosen (row, p), a thought of N-1 single-token steps on that row's cache with the keys after
p masked, at position ids p+1 .. p+N-1 (the training call's steps 1..N-1 at that position), and the mixing head.
Each row's prefix runs once; the thoughts cost N-1 tokens per chosen position instead of N-1 steps over every
token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loss.mixing import mix_hidden
from ..quietstar.steps import cache_kwarg, new_cache
from ..quietstar.thinking import think
from .scoring import evaluation_settings

MAX_THOUGHTS_PER_CALL = 64  # (row, position) pairs thinking together: each holds a copy of its row's KV cache


@dataclass
class PositionScores:
    """Scores at M chosen (row, position) pairs, each predicting the token after its position.

    thought_hidden, base_hidden: (M, D) what the LM head reads with / without the thought (``logits_for``).
    thought_tokens: (M, N-3) the thought sampled at each pair.
    """

    thought_hidden: torch.Tensor
    base_hidden: torch.Tensor
    thought_tokens: torch.Tensor


def _copy_rows(cache, rows: torch.Tensor):
    """A new cache holding ``rows`` of ``cache`` (the base rows' prefix, shared by their chosen positions)."""
    copy = new_cache()
    for layer_index, layer in enumerate(cache.layers):
        copy.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), layer_index)
    return copy


@torch.no_grad()
def score_positions(quiet, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, rows: torch.Tensor,
                    positions: torch.Tensor, *, gumbel_noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None,
                    max_thoughts_per_call: int = MAX_THOUGHTS_PER_CALL) -> PositionScores:
    """The with- and without-thought predictions at (``rows[m]``, ``positions[m]``) of ``input_ids``.

    Args:
        input_ids: (B, n) right-padded ids; attention_mask: (B, n), 1 = real token (default all ones).
        rows, positions: (M,) int64; every position must be a real token of its row.
        gumbel_noise: (N-3, B, n, V) thought noise as ``QuietStar.forward`` takes it (the draws at the chosen
            positions are used), else thoughts are drawn from ``generator``.
    """
    batch, seq_len = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    rows, positions = rows.to(device=device, dtype=torch.long), positions.to(device=device, dtype=torch.long)
    if rows.shape != positions.shape or rows.dim() != 1:
        raise ValueError(f"rows and positions must be (M,) tensors of one shape, got {tuple(rows.shape)} and "
                         f"{tuple(positions.shape)}")
    if rows.numel() and (bool(((rows < 0) | (rows >= batch)).any()) or
                         bool(((positions < 0) | (positions >= seq_len)).any()) or
                         not bool(mask[rows, positions].bool().all())):
        raise ValueError(f"every (row, position) must be a real token of the (B={batch}, n={seq_len}) batch")
    decoder = quiet.model.get_decoder()
    cache_name = cache_kwarg(decoder)
    with evaluation_settings(quiet):
        cache = new_cache()
        columns = torch.arange(seq_len, device=device)[None]
        base = decoder(input_ids=input_ids, attention_mask=mask, position_ids=columns, use_cache=True,
                       **{cache_name: cache}).last_hidden_state
        thought_hidden, base_hidden, thoughts = [], [], []
        for start in range(0, rows.numel(), max_thoughts_per_call):
            chunk_rows, chunk_positions = rows[start:start + max_thoughts_per_call], positions[start:start +
                                                                                               max_thoughts_per_call]
            chunk_cache = _copy_rows(cache, chunk_rows)
            # keys after each chosen position are masked: its thought sees the prefix up to it and its own stream
            prefix_mask = mask[chunk_rows] * (columns <= chunk_positions[:, None])

            def step(inputs_embeds, chunk_cache=chunk_cache, prefix_mask=prefix_mask, chunk_positions=chunk_positions):
                offset = chunk_cache.get_seq_length() - seq_len + 1
                columns = prefix_mask.new_ones(prefix_mask.shape[0], offset)
                return decoder(inputs_embeds=inputs_embeds, attention_mask=torch.cat([prefix_mask, columns], dim=1),
                               position_ids=(chunk_positions + offset)[:, None], use_cache=True,
                               **{cache_name: chunk_cache}).last_hidden_state[:, -1]

            last_hidden = base[chunk_rows, chunk_positions]
            noise = None if gumbel_noise is None else gumbel_noise[:, chunk_rows, chunk_positions]
            after_thought, thought = think(quiet, step, last_hidden, generator, noise)
            mix_weight = quiet.talk_head[0](torch.cat([last_hidden, after_thought], dim=-1))
            thought_hidden.append(mix_hidden(last_hidden, after_thought, mix_weight))
            base_hidden.append(last_hidden)
            thoughts.append(thought)
    if not thoughts:
        empty = base.new_zeros(0, base.shape[-1])
        return PositionScores(empty, empty, input_ids.new_zeros(0, quiet.quietstar_config.num_thought_tokens))
    return PositionScores(torch.cat(thought_hidden), torch.cat(base_hidden), torch.cat(thoughts))
