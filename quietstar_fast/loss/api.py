"""Public LM-head ops: the mixed talk cross-entropy and thought sampling with its REINFORCE log-prob."""
from __future__ import annotations

from typing import Sequence

import torch

from .._platform import resolve_impl
from .checks import (
    banned_mask,
    check_hidden_and_weight,
    check_like_rows,
    check_targets,
    check_temperature,
)
from .function import TORCH, cuda_backend, linear_nll, triton_backend, weighted_linear_nll
from .mixing import mix_hidden
from .reference import reference_cross_entropy, reference_sample

def loss_backend(impl: str, x: torch.Tensor):
    """The fused backend ("torch", "triton" or "cuda") that ``impl`` selects for tensors like ``x``."""
    impl = resolve_impl(impl, x)
    if impl == "reference":
        raise ValueError("the reference implementation has no fused backend")
    return {"triton": triton_backend, "cuda": cuda_backend}.get(impl, lambda: TORCH)()


def _check_mixed_ce_arguments(h_base, lm_head_weight, targets, h_thought, mix_weight, ignore_index) -> None:
    check_hidden_and_weight("h_base", h_base, lm_head_weight)
    if (h_thought is None) != (mix_weight is None):
        raise ValueError("h_thought and mix_weight must be given together (or neither, for the plain base CE)")
    if h_thought is not None:
        check_like_rows("h_thought", h_thought, h_base, "h_base", [tuple(h_base.shape)])
        check_like_rows("mix_weight", mix_weight, h_base, "h_base", [(h_base.shape[0],), (h_base.shape[0], 1)])
        for name, x in (("h_thought", h_thought), ("mix_weight", mix_weight)):
            if x.dtype != h_base.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but h_base has {h_base.dtype}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    check_targets(targets, h_base, lm_head_weight.shape[0], ignore_index)


def mixed_cross_entropy(
    h_base: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    h_thought: torch.Tensor | None = None,
    mix_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    return_lse: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE(W @ ((1 - w) * h_base + w * h_thought), y) without materialising the (N, V) logits.

    Args:
        h_base: (N, D) base hidden states (the official h_0 at the position predicting the same target).
        lm_head_weight: (V, D), the bias-free LM head.
        targets: (N,) int token ids in [0, V), or ``ignore_index`` (loss 0, no gradient).
        h_thought: (N, D) thought hidden states; with ``mix_weight`` (N,) or (N, 1), unbounded as in the official
            code (w = 0 is the base prediction). Without both, the plain base cross-entropy.
        return_lse: also return the log-sum-exp of the (mixed) logits (N,); it is not differentiable.
        impl: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "cuda" (the CUDA C++ kernels of the optional
            extension ``quietstar_fast._C``), "torch" (row-chunked), "reference" (full logits, as the official code),
            or "auto" (triton on CUDA, torch otherwise).

    Returns:
        loss (N,) fp32 (fp64 for fp64 inputs), differentiable in h_base, h_thought, mix_weight and lm_head_weight.
    """
    _check_mixed_ce_arguments(h_base, lm_head_weight, targets, h_thought, mix_weight, ignore_index)
    impl = resolve_impl(impl, h_base)
    hidden = mix_hidden(h_base, h_thought, mix_weight)
    if impl == "reference":
        loss, lse = reference_cross_entropy(hidden, lm_head_weight, targets, ignore_index)
    else:
        backend = loss_backend(impl, h_base)
        loss, lse, _ = linear_nll(hidden, lm_head_weight, targets=targets.long(), ignore_index=ignore_index,
                                  backend=backend)
    return (loss, lse) if return_lse else loss


def weighted_mixed_cross_entropy(
    h_base: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    h_thought: torch.Tensor | None = None,
    mix_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i row_weights_i * CE_i of ``mixed_cross_entropy``, for a loss that is a fixed linear function of the
    per-token losses and the last op before ``backward()`` (the talk loss of a Quiet-STaR step): the gradients are
    computed in the forward, in the same pass over the vocabulary that computes the losses, so the backward does
    not recompute the logits (three GEMMs instead of four) and only scales them by the upstream gradient.

    Args:
        h_base, lm_head_weight, targets, h_thought, mix_weight, ignore_index: as ``mixed_cross_entropy``.
        row_weights: (N,) the fixed weight of each token's loss (ignored tokens count 0 whatever their weight); not
            differentiated.

    Returns:
        (total, loss): total, a 0-dim tensor differentiable in h_base, h_thought, mix_weight and lm_head_weight;
        loss (N,) the per-token CE (fp32, fp64 for fp64 inputs), not differentiable. The gradients live from the
        forward until the backward: one (V, D) dW and one (N, D) dH per call, which is why this is for the last op.
        Runs the row-chunked PyTorch path on every device (a fused GPU version is issue #25's).
    """
    _check_mixed_ce_arguments(h_base, lm_head_weight, targets, h_thought, mix_weight, ignore_index)
    check_like_rows("row_weights", row_weights, h_base, "h_base", [(h_base.shape[0],)])
    if not row_weights.dtype.is_floating_point:
        raise TypeError(f"row_weights must be a floating-point tensor, got {row_weights.dtype}")
    hidden = mix_hidden(h_base, h_thought, mix_weight)
    return weighted_linear_nll(hidden, lm_head_weight, targets.long(), row_weights.detach(), ignore_index)


def sample_thought_tokens(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    *,
    gumbel_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    banned_token_ids: Sequence[int] | torch.Tensor = (),
    policy_temperature: float = 3.0,
    sample_temperature: float | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one thought token per row from z = W @ h and return its REINFORCE log-prob, without (N, V) tensors.

    tokens = argmax(z + g) over the non-banned ids, g ~ Gumbel(0, 1): an exact temperature-1 sample, which is what
    the official code draws whatever its Gumbel-softmax tau. ``sample_temperature`` (a deliberate fix, off by
    default) samples from softmax(z / sample_temperature) instead. logprob = log_softmax(z / policy_temperature)
    at the token, with banned logits set to -1e10 as in the official code; differentiable in hidden and W.

    Args:
        hidden: (N, D); lm_head_weight: (V, D).
        gumbel_noise: (N, V) noise added to the logits, as the official code adds it: with it, the tokens are
            reproducible against the reference. Without it the noise is drawn from ``generator`` (torch's default
            generator if None) and never stored as (N, V).
        banned_token_ids: ids never sampled (the official code bans <|startthought|> and <|endthought|>).

    Returns:
        tokens (N,) int64 and logprob (N,) fp32 (fp64 for fp64 inputs).
    """
    check_hidden_and_weight("hidden", hidden, lm_head_weight)
    vocab = lm_head_weight.shape[0]
    if gumbel_noise is not None:
        check_like_rows("gumbel_noise", gumbel_noise, hidden, "hidden", [(hidden.shape[0], vocab)])
        if not gumbel_noise.dtype.is_floating_point:
            raise TypeError(f"gumbel_noise must be floating point, got {gumbel_noise.dtype}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    inv_policy_t = 1.0 / check_temperature("policy_temperature", policy_temperature)
    sample_scale = 1.0 if sample_temperature is None else 1.0 / check_temperature("sample_temperature",
                                                                                   sample_temperature)
    banned = banned_mask(banned_token_ids, vocab, hidden.device)
    impl = resolve_impl(impl, hidden)
    if impl == "reference":
        tokens, logprob, _ = reference_sample(hidden, lm_head_weight, gumbel_noise, generator, banned,
                                              policy_temperature, sample_temperature)
        return tokens, logprob
    backend = loss_backend(impl, hidden)
    noise = None if gumbel_noise is None else gumbel_noise.contiguous()
    nll, _, tokens = linear_nll(hidden, lm_head_weight, noise=noise, generator=generator, banned=banned,
                                inv_t=inv_policy_t, sample_scale=sample_scale, backend=backend)
    return tokens, -nll
