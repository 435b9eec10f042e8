"""Quiet-STaR hyperparameters and the official code's number-changing quirks, each a documented switch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuietStarConfig:
    """Defaults are the official train script's (``quiet-star-train.py`` / ``MistralForCausalLM.__init__``).

    Attributes:
        n_ahead: N, thought length counted as start + (N-3) sampled tokens + end + 1 (the official ``n_ahead``).
        n_ahead_talk: T, true tokens scored after the thought.
        n_passes: P, thoughts sampled per position (rows b*P .. b*P+P-1 hold copies of sequence b).
        original_loss_weight: weight of the base NLL (the talk NLLs get 1 - it).
        policy_loss_beta: the REINFORCE weight (1e6).
        reinforce_temperature: temperature of the policy log-prob (3).
        embedding_scale: the start/end embeddings are stored divided by this and used multiplied by it (100).
        reward_window_off_by_one: score positions i <= n-2-T as the official code does (True), or i <= n-1-T.
        remove_negative_rewards: clamp the baselined reward at 0 (official: True).
        sample_temperature: None samples thoughts at temperature 1, as the official code does whatever its Gumbel
            tau (its hard Gumbel-softmax ignores tau); a number samples from softmax(z / sample_temperature), a fix.
    """

    n_ahead: int = 12
    n_ahead_talk: int = 4
    n_passes: int = 2
    original_loss_weight: float = 0.5
    policy_loss_beta: float = 1e6
    reinforce_temperature: float = 3.0
    embedding_scale: float = 100.0
    reward_window_off_by_one: bool = True
    remove_negative_rewards: bool = True
    sample_temperature: float | None = None

    def __post_init__(self):
        if self.n_ahead < 3:
            raise ValueError(f"n_ahead must be at least 3 (start, end and one step), got {self.n_ahead}")
        if self.n_ahead_talk < 1:
            raise ValueError(f"n_ahead_talk must be at least 1, got {self.n_ahead_talk}")
        if self.n_passes < 1:
            raise ValueError(f"n_passes must be at least 1, got {self.n_passes}")

    @property
    def num_steps(self) -> int:
        """S = N + T - 1 model calls per training step."""
        return self.n_ahead + self.n_ahead_talk - 1

    @property
    def num_thought_tokens(self) -> int:
        """K = N - 3 sampled thought tokens."""
        return self.n_ahead - 3
