"""quietstar_fast: fused kernels for Quiet-STaR training and thinking inference."""
from .attention import thought_attention
from .hf import apply_quietstar_kernels, revert_quietstar_kernels
from .loss import mixed_cross_entropy, sample_thought_tokens
from .mask import ThoughtMaskLayout, official_step_mask
from .memory import StepMemory, estimate_step_memory
from .quietstar import QuietStar, QuietStarConfig, QuietStarOutput, add_thought_tokens

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
]
__version__ = "0.1.0"
