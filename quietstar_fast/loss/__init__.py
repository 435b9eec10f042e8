from .api import mixed_cross_entropy, sample_thought_tokens

__all__ = ["mixed_cross_entropy", "sample_thought_tokens"]
