from .api import thought_attention

__all__ = ["thought_attention"]
