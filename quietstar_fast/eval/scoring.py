"""Teacher-forced scoring with and without thoughts: both columns of the paper's table from one model call.

The official evaluation (``quiet-star-train.py``'s ``Trainer.evaluate``) runs the training forward in eval mode, where
the official forward switches to one talk step and one pass: every position thinks (start, N-3 sampled tokens, end),
and the mixed (talk-head) prediction of the next true token is the "with thoughts" score. The same call's step 0 is
the base model: the "without thoughts" score. ``score_tokens`` runs exactly that through ``QuietStar``'s own step
(the fast path unless ``quiet.impl == "reference"``), so scores and training share one implementation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

from ..loss.mixing import mix_hidden


@dataclass
class TokenScores:
    """Scores of every next token of a (B, n) batch; position i predicts token i + 1.

    thought_logprobs: (B, n-1) log p(x_{i+1}) under the mixed head (with thoughts); 0 where the token is ignored
        (padding, or a label of -100).
    base_logprobs: (B, n-1) log p(x_{i+1}) of the base model (without thoughts); 0 where ignored.
    thought_hidden, base_hidden: (B, n, D) what the LM head reads at each position (mixed / base); logits over any
        ids are ``logits_for(hidden, ...)``.
    thought_tokens: (B, n, K) the thought sampled at each position.
    """

    thought_logprobs: torch.Tensor
    base_logprobs: torch.Tensor
    thought_hidden: torch.Tensor
    base_hidden: torch.Tensor
    thought_tokens: torch.Tensor


@contextlib.contextmanager
def evaluation_settings(quiet):
    """One talk step, one pass and eval mode (no dropout), as the official forward evaluates; restored on exit."""
    settings, was_training = quiet.quietstar_config, quiet.training
    quiet.quietstar_config = replace(settings, n_ahead_talk=1, n_passes=1)
    quiet.eval()
    try:
        yield quiet.quietstar_config
    finally:
        quiet.quietstar_config = settings
        quiet.train(was_training)


@torch.no_grad()
def score_tokens(quiet, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 gumbel_noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> TokenScores:
    """Score every next token of ``input_ids`` with and without thoughts.

    Args:
        quiet: a ``QuietStar``.
        input_ids: (B, n) right-padded ids, n >= 3.
        attention_mask: (B, n), 1 = real token; defaults to all ones.
        gumbel_noise: (N-3, B, n, V) thought noise, as ``QuietStar.forward`` takes it (official draws); without it
            thoughts are sampled from ``generator``.
    """
    with evaluation_settings(quiet):
        out = quiet(input_ids, attention_mask, gumbel_noise=gumbel_noise, generator=generator,
                    output_hidden_states=True)
    base_hidden, talk_hidden = out.hidden_states[0], out.hidden_states[-1]
    batch, seq_len, dim = base_hidden.shape
    thought_hidden = mix_hidden(base_hidden.reshape(-1, dim), talk_hidden.reshape(-1, dim),
                                out.talk_weights[-1].reshape(-1)).view(batch, seq_len, dim)
    return TokenScores(thought_logprobs=-out.talk_nll[0], base_logprobs=-out.base_nll,
                       thought_hidden=thought_hidden, base_hidden=base_hidden,
                       thought_tokens=out.thought_tokens.permute(1, 2, 0))


def logits_for(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits of ``hidden`` (..., D) over ``token_ids`` (A,) of the LM head ``weight`` (V, D), or over the whole
    vocabulary: (..., A) or (..., V); not differentiable (scoring). Call it on the few positions needed, not on every
    token."""
    weight = weight.detach()
    rows = weight if token_ids is None else weight.index_select(0, token_ids.to(weight.device))
    return hidden.detach().float() @ rows.float().T
