"""One thought after the last real token of each row, as single-token steps on a KV cache (thinking generation and
position scoring share it)."""
from __future__ import annotations

from typing import Callable

import torch

from .steps import meta_embedding


def think(qs, step: Callable[[torch.Tensor], torch.Tensor], last_hidden: torch.Tensor,
          generator: torch.Generator | None = None,
          gumbel_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """<|startthought|>, N-3 sampled tokens and <|endthought|> through ``step`` (inputs_embeds (B, 1, D) -> the new
    column's final hidden state (B, D)), the thought delimiters never sampled, as the training call's steps 1..N-1 at
    one position. ``gumbel_noise``: (N-3, B, V) official draws for the sampled tokens, else ``generator``.

    Returns (the hidden state after <|endthought|> (B, D), the thought (B, N-3))."""
    from ..loss import sample_thought_tokens

    cfg = qs.quietstar_config
    embed = qs.model.get_input_embeddings()
    weight = qs.model.get_output_embeddings().weight
    inputs = meta_embedding(qs.start_embedding, cfg.embedding_scale, last_hidden[:, None])
    thought = []
    for offset in range(1, cfg.n_ahead):
        hidden = step(inputs)
        if offset <= cfg.num_thought_tokens:
            noise = None if gumbel_noise is None else gumbel_noise[offset - 1]
            token, _ = sample_thought_tokens(hidden, weight, gumbel_noise=noise, generator=generator,
                                             banned_token_ids=[qs.start_token_id, qs.end_token_id],
                                             policy_temperature=cfg.reinforce_temperature,
                                             sample_temperature=cfg.sample_temperature)
            thought.append(token)
            inputs = embed(token[:, None])
        elif offset == cfg.n_ahead - 2:
            inputs = meta_embedding(qs.end_embedding, cfg.embedding_scale, inputs)
    if not thought:
        return hidden, last_hidden.new_zeros(last_hidden.shape[0], 0, dtype=torch.long)
    return hidden, torch.stack(thought, dim=1)
