from .config import QuietStarConfig
from .module import QuietStar, QuietStarOutput

__all__ = ["QuietStar", "QuietStarConfig", "QuietStarOutput"]
