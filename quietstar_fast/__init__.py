"""quietstar_fast: fused kernels for Quiet-STaR training and thinking inference."""
from .attention import thought_attention
from .mask import ThoughtMaskLayout, official_step_mask

__all__ = ["ThoughtMaskLayout", "official_step_mask", "thought_attention"]
__version__ = "0.1.0"
