"""Drop-in thought-aware attention for HF causal LMs (transformers' AttentionInterface; which models:
``model_support.py``).

``apply_quietstar_kernels(model)`` switches the model to the attention implementation "quietstar_thought". A model
call made with ``**thought_call_kwargs(ThoughtLayout(...))`` (transformers forwards extra keyword arguments to the
attention function) runs ``thought_attention`` over the model's KV cache, which holds exactly the official layout
[prefix n | stream step 1 | ...], and builds no mask; any other call falls back to PyTorch SDPA with the usual
padding-aware mask, so the model keeps working for ordinary use. Each layer's attention window is the one the model
passes its attention function (``sliding_window``), so per-layer windows (Gemma 3, Qwen2/3) hold in thought calls
too. ``revert_quietstar_kernels(model)`` restores the previous implementation. The name avoids "flash"
(transformers treats such names as flash-attn kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import thought_attention
from .model_support import check_supported_model

ATTENTION_NAME = "quietstar_thought"
# Arguments some models pass their attention function that change the scores; the thought attention refuses them.
_SCORE_CHANGING_KWARGS = ("s_aux", "position_bias")
_PREVIOUS = "_quietstar_previous_attn_implementation"
# transformers returns a 4-D attention_mask as-is instead of building one: thought calls pass this empty one, so no
# (n x n*(a+1)) mask is ever built; the thought attention ignores it and takes its ThoughtLayout instead.
_NO_MASK = torch.zeros(1, 1, 0, 0, dtype=torch.bool)


@dataclass(frozen=True)
class ThoughtLayout:
    """Per-call structure for the thought attention: the prefix length n, key padding (B, n) bool, the backend."""

    prefix_len: int
    key_padding_mask: torch.Tensor | None = None
    impl: str = "auto"


def _thought_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                               is_causal=None, quietstar_layout: ThoughtLayout | None = None,
                               sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    if quietstar_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, sliding_window=sliding_window, softcap=softcap, **kwargs)
    if dropout:
        raise ValueError("thought attention does not support attention dropout")
    if softcap is not None:
        raise ValueError(f"thought attention does not soft-cap attention scores (softcap={softcap})")
    changing = sorted(name for name in _SCORE_CHANGING_KWARGS if kwargs.get(name) is not None)
    if changing:
        raise ValueError(f"thought attention does not apply {changing} (attention sinks / biases) of this model")
    out = thought_attention(query, key, value, prefix_len=quietstar_layout.prefix_len,
                            key_padding_mask=quietstar_layout.key_padding_mask, sliding_window=sliding_window,
                            softmax_scale=scaling, impl=quietstar_layout.impl)
    return out.transpose(1, 2).contiguous(), None


def thought_call_kwargs(layout: ThoughtLayout) -> dict:
    """Keyword arguments that make one model call run the thought attention with ``layout``."""
    return {"attention_mask": _NO_MASK, "quietstar_layout": layout}


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _thought_attention_forward)
    # Ordinary calls (the SDPA fallback) need the padding-aware mask SDPA gets.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def apply_quietstar_kernels(model: nn.Module) -> nn.Module:
    """Route the model's attention through ``thought_attention`` for calls carrying a ``quietstar_layout``."""
    check_supported_model(model)
    _register()
    current = model.config._attn_implementation
    if current != ATTENTION_NAME:
        setattr(model, _PREVIOUS, current)
        model.set_attn_implementation(ATTENTION_NAME)
    return model


def revert_quietstar_kernels(model: nn.Module) -> nn.Module:
    """Undo ``apply_quietstar_kernels``."""
    previous = getattr(model, _PREVIOUS, None)
    if previous is not None:
        model.set_attn_implementation(previous)
        delattr(model, _PREVIOUS)
    return model
