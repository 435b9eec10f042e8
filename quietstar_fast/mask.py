"""The parallel-thought attention mask: the single definition every implementation is tested against.

Key layout (the official KV cache): ``[prefix n | stream step 1 n | ... | stream step a n]``; key ``s*n + j`` is
stream step ``s`` of position ``j`` (``s = 0`` is the real token). The query of position ``i`` at step ``r`` may see

* prefix keys ``j`` with ``j <= i``, ``key_padding_mask[j]`` and ``i - j < sliding_window``;
* its own stream keys ``(s, i)`` for ``s = 1..r``, only if position ``i`` itself is not padding.

``official_step_mask`` rebuilds the additive mask exactly as the official code does at step ``r``
(``[C | D | ... | D]``, C = HF causal+padding+window mask, D = C's allowed diagonal). ``ThoughtMaskLayout`` stacks
those per-step masks for a call that carries the last ``m`` steps' queries at once.

One divergence, by design: the official code takes ``C.max()`` over the whole batch, so for a batch in which every
position is padding it allows every own-stream key. Here (and in every kernel) a padded position never sees its
stream keys; such a batch gets o = 0 and lse = -inf. ``official_step_mask`` keeps the official behaviour.

Sliding window: ``i - j < W`` (W keys including the query's own position), the convention of the transformers
release the official code was written against. Newer transformers releases keep ``i - j <= W``; pass ``W + 1`` to
reproduce those.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _hf_causal_padding_mask(
    key_padding_mask: torch.Tensor | None,
    prefix_len: int,
    sliding_window: int | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """HF ``_prepare_4d_causal_attention_mask`` with no past: (B or 1, 1, n, n), 0 = allowed, finfo.min = masked."""
    masked_value = torch.finfo(dtype).min
    i = torch.arange(prefix_len, device=device)
    disallowed = i[None, :] > i[:, None]
    if sliding_window is not None:
        disallowed |= (i[:, None] - i[None, :]) >= sliding_window
    disallowed = disallowed[None, None]
    if key_padding_mask is not None:
        disallowed = disallowed | ~key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    zeros = torch.zeros(disallowed.shape, dtype=dtype, device=device)
    return zeros.masked_fill(disallowed, masked_value)


def official_step_mask(
    prefix_len: int,
    step: int,
    key_padding_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The additive mask the official code passes to the model at thought step ``step``.

    Returns (B or 1, 1, n, n*(step+1)): ``[C | D | ... | D]`` with ``step`` diagonal blocks, 0 where attention is
    allowed and ``finfo(dtype).min`` where it is masked.
    """
    causal = _hf_causal_padding_mask(key_padding_mask, prefix_len, sliding_window, dtype, device)
    # The official code: allowed = (C == C.max()), times an identity built in fp32, mapped back to 0 / min.
    allowed = causal == causal.max()
    eye = torch.eye(prefix_len, dtype=torch.float32, device=device).to(dtype)
    diagonal_allowed = (allowed.to(dtype) * eye) == 1
    diagonal = torch.zeros_like(causal).masked_fill(~diagonal_allowed, torch.finfo(dtype).min)
    return torch.cat([causal] + [diagonal] * step, dim=-1)


@dataclass(frozen=True)
class ThoughtMaskLayout:
    """Shape of one thought-attention call.

    Attributes:
        prefix_len: n, the number of real tokens (and of stream tokens per step).
        num_stream_steps: a, the number of stream blocks after the prefix in the keys.
        num_query_steps: m, the queries are the last m steps ``a+1-m .. a`` (step 0 = the prefix itself).
        key_padding_mask: (B, n) bool, True = real token; None = no padding.
        sliding_window: W, or None for no window.
    """

    prefix_len: int
    num_stream_steps: int
    num_query_steps: int = 1
    key_padding_mask: torch.Tensor | None = None
    sliding_window: int | None = None

    @property
    def first_query_step(self) -> int:
        return self.num_stream_steps + 1 - self.num_query_steps

    def dense_allowed(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool (B or 1, 1, m*n, (a+1)*n): row block r holds the official step mask of step ``first_query_step + r``.

        Keys of stream steps after a query's own step do not exist in the official per-step call; they are False.
        """
        n, a = self.prefix_len, self.num_stream_steps
        rows = []
        for step in range(self.first_query_step, a + 1):
            step_mask = official_step_mask(n, step, self.key_padding_mask, self.sliding_window, device=device) == 0
            missing = step_mask.new_zeros(step_mask.shape[:-1] + ((a - step) * n,))
            rows.append(torch.cat([step_mask, missing], dim=-1))
        return torch.cat(rows, dim=-2)
