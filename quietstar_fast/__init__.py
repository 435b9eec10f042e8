"""quietstar_fast: fused kernels for Quiet-STaR training and thinking inference.

The ops (``thought_attention``, the fused LM-head losses, the mask) need only torch; the Quiet-STaR wrapper and the
memory model wrap HF models and need ``transformers`` (``pip install quietstar_fast[hf]``), so they load on first
use.
"""
import importlib

from .attention import thought_attention
from .hf import apply_quietstar_kernels, revert_quietstar_kernels
from .loss import mixed_cross_entropy, sample_thought_tokens, weighted_mixed_cross_entropy
from .mask import ThoughtMaskLayout, official_step_mask

_NEEDING_TRANSFORMERS = {
    "QuietStar": ".quietstar",
    "QuietStarConfig": ".quietstar",
    "QuietStarOutput": ".quietstar",
    "add_thought_tokens": ".quietstar",
    "StepMemory": ".memory",
    "estimate_step_memory": ".memory",
}


def __getattr__(name: str):
    if name in _NEEDING_TRANSFORMERS:
        return getattr(importlib.import_module(_NEEDING_TRANSFORMERS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "QuietStar",
    "QuietStarConfig",
    "QuietStarOutput",
    "StepMemory",
    "ThoughtMaskLayout",
    "add_thought_tokens",
    "apply_quietstar_kernels",
    "estimate_step_memory",
    "revert_quietstar_kernels",
    "mixed_cross_entropy",
    "official_step_mask",
    "sample_thought_tokens",
    "thought_attention",
    "weighted_mixed_cross_entropy",
]
__version__ = "0.1.0"
