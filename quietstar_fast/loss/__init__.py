from .api import mixed_cross_entropy, sample_thought_tokens, weighted_mixed_cross_entropy

__all__ = ["mixed_cross_entropy", "sample_thought_tokens", "weighted_mixed_cross_entropy"]
