from .config import QuietStarConfig
from .module import QuietStar
from .output import QuietStarOutput
from .tokens import ThoughtTokenIds, add_thought_tokens

__all__ = ["QuietStar", "QuietStarConfig", "QuietStarOutput", "ThoughtTokenIds", "add_thought_tokens"]
