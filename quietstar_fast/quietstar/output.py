"""``QuietStarOutput``: what one Quiet-STaR training call returns, and how its per-step terms become the objective.
A module of its own, below the step implementations (``fast.py``, ``reference.py``) and the wrapper that calls them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .config import QuietStarConfig
from .objective import quietstar_objective


@dataclass
class QuietStarOutput(ModelOutput):
    """Everything one Quiet-STaR training call computes. Shapes use B' = B * n_passes rows.

    A transformers ``ModelOutput``: fields read as attributes or keys (``out["loss"]``, which is how ``Trainer``
    finds the loss); every field is set by ``from_terms`` except ``hidden_states`` when not requested.
    """

    loss: torch.Tensor | None = None
    nll_loss: torch.Tensor | None = None
    policy_loss: torch.Tensor | None = None
    base_nll: torch.Tensor | None = None  # (B', n-1)
    talk_nll: list[torch.Tensor] | None = None  # T x (B', n-k)
    base_nll_for_reward: list[torch.Tensor] | None = None  # T x (B', n-k), detached
    reward_raw: torch.Tensor | None = None  # (B', window)
    reward_baselined: torch.Tensor | None = None
    reward_clamped: torch.Tensor | None = None
    action_logprobs: torch.Tensor | None = None  # (K, B', n)
    policy_loss_terms: torch.Tensor | None = None  # (K,)
    talk_weights: torch.Tensor | None = None  # (S-1, B', n, 1): mixing weight at steps 1..S-1
    thought_tokens: torch.Tensor | None = None  # (K, B', n)
    hidden_states: torch.Tensor | None = None  # (S, B', n, D) when requested

    @classmethod
    def from_terms(cls, config: QuietStarConfig, base_nll, talk_nll, base_nll_for_reward, logprobs, talk_weights,
                   thought_tokens, hidden_states, output_hidden_states: bool,
                   talk_loss: torch.Tensor | None = None) -> "QuietStarOutput":
        """Combine one call's per-step terms (lists over steps) into the objective and the output; ``talk_loss``:
        see ``quietstar_objective``."""
        rows, seq_len = base_nll.shape[0], base_nll.shape[1] + 1
        action_logprobs = torch.stack(logprobs) if logprobs else base_nll.new_zeros(0, rows, seq_len)
        objective = quietstar_objective(config, base_nll, talk_nll, base_nll_for_reward, action_logprobs, talk_loss)
        empty_tokens = torch.zeros(0, rows, seq_len, dtype=torch.long, device=base_nll.device)
        return cls(
            loss=objective.loss, nll_loss=objective.nll_loss, policy_loss=objective.policy_loss, base_nll=base_nll,
            talk_nll=talk_nll, base_nll_for_reward=base_nll_for_reward, reward_raw=objective.reward_raw,
            reward_baselined=objective.reward_baselined, reward_clamped=objective.reward_clamped,
            action_logprobs=action_logprobs, policy_loss_terms=objective.policy_loss_terms,
            talk_weights=torch.stack(talk_weights),
            thought_tokens=torch.stack(thought_tokens) if thought_tokens else empty_tokens,
            hidden_states=torch.stack(hidden_states) if output_hidden_states else None,
        )
