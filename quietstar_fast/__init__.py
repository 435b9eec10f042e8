"""quietstar_fast: fused kernels for Quiet-STaR training and thinking inference."""
from .attention import thought_attention
from .loss import mixed_cross_entropy, sample_thought_tokens
from .mask import ThoughtMaskLayout, official_step_mask

__all__ = [
    "ThoughtMaskLayout",
    "mixed_cross_entropy",
    "official_step_mask",
    "sample_thought_tokens",
    "thought_attention",
]
__version__ = "0.1.0"
