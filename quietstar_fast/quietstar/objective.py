"""The Quiet-STaR objective from per-token terms, shared by the reference and the fast path.

Formulas as the official code computes them (quietstar-algorithm.md §5): the non-zero mean of the NLLs, the
reward as the summed talk-NLL improvement over the base, baselined by the mean over the P passes of an example,
clamped at 0 and detached, and REINFORCE on the sampled thought tokens' log-probs with weight beta.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import QuietStarConfig


def nonzero_mean(x: torch.Tensor) -> torch.Tensor:
    """Sum / count of non-zero entries: the official ``loss_mean`` (ignored targets have CE exactly 0)."""
    return x.sum() / (x != 0).sum()


@dataclass
class Objective:
    loss: torch.Tensor
    nll_loss: torch.Tensor
    policy_loss: torch.Tensor
    policy_loss_terms: torch.Tensor  # (K,)
    reward_raw: torch.Tensor  # (B*P, window)
    reward_baselined: torch.Tensor
    reward_clamped: torch.Tensor


def reward_window(config: QuietStarConfig, seq_len: int) -> int:
    """Positions scored by the reward: the official code keeps n-1-T (one fewer than the valid n-T)."""
    return seq_len - 1 - config.n_ahead_talk if config.reward_window_off_by_one else seq_len - config.n_ahead_talk


def quietstar_objective(
    config: QuietStarConfig,
    base_nll: torch.Tensor,
    talk_nll: list[torch.Tensor],
    base_nll_for_reward: list[torch.Tensor],
    action_logprobs: torch.Tensor,
    talk_loss: torch.Tensor | None = None,
) -> Objective:
    """Combine the per-token terms.

    Args:
        base_nll: (B*P, n-1) CE of the step-0 logits.
        talk_nll: T tensors (B*P, n-k): CE of the mixed logits at talk step k.
        base_nll_for_reward: T tensors (B*P, n-k): CE of the step-0 logits at the same targets (detached).
        action_logprobs: (K, B*P, n) log-probs of the sampled thought tokens at the policy temperature.
        talk_loss: the talk term (1 - original_loss_weight) * mean_k nonzero_mean(talk_nll[k]) already formed, with
            its gradients computed in the forward (then ``talk_nll`` carries values only); None forms it here.
    """
    rows, seq_len = base_nll.shape[0], base_nll.shape[1] + 1
    window = reward_window(config, seq_len)
    if talk_loss is None:
        talk_loss = (1 - config.original_loss_weight) * sum(nonzero_mean(nll) for nll in talk_nll) / config.n_ahead_talk
    nll_loss = config.original_loss_weight * nonzero_mean(base_nll) + talk_loss
    with torch.no_grad():
        reward_raw = sum((base - talk)[:, :window] for base, talk in zip(base_nll_for_reward, talk_nll))
        passes = config.n_passes
        if passes > 1:
            per_example = reward_raw.view(rows // passes, passes, window)
            reward_baselined = (per_example - per_example.mean(dim=1, keepdim=True)).view(rows, window)
        else:
            reward_baselined = reward_raw
        reward_clamped = reward_baselined.clamp_min(0) if config.remove_negative_rewards else reward_baselined
    policy_terms = (-reward_clamped * action_logprobs[:, :, :window]).mean(dim=(1, 2))
    # n_ahead = 3 samples no thought token: no policy term (rather than the mean of nothing).
    policy_loss = config.policy_loss_beta * policy_terms.mean() if len(policy_terms) else nll_loss.new_zeros(())
    return Objective(nll_loss + policy_loss, nll_loss, policy_loss, policy_terms, reward_raw, reward_baselined,
                     reward_clamped)
