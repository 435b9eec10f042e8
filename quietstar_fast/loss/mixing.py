"""The mixing of base and thought hidden states, one definition for every backend."""
from __future__ import annotations

import torch


def mix_hidden(h_base: torch.Tensor, h_thought: torch.Tensor | None, mix_weight: torch.Tensor | None) -> torch.Tensor:
    """(1 - w) * h_base + w * h_thought, as the official ``use_weighted_talk_head`` mixing (w unbounded, w = 0 keeps
    the base). Because the LM head is linear without bias, this equals mixing the logits. h: (N, D), w: (N,) or
    (N, 1)."""
    if h_thought is None:
        return h_base
    weight = mix_weight.reshape(-1, 1)
    return (1 - weight) * h_base + weight * h_thought
