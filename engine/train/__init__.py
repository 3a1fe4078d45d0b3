"""The training program (``python -m engine.train RUN_DIR``) and its configuration.

Only the light configuration is imported here; the program imports torch and friends when it runs.
"""

from .config import METHODS, TrainConfig, TrainConfigError

__all__ = ["METHODS", "TrainConfig", "TrainConfigError"]
