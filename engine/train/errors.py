"""Why a run stops: the message of each is the sentence the user sees."""


class TrainingError(Exception):
    """The run cannot go on (exit code 1)."""


class DataError(TrainingError):
    """The dataset snapshot is unusable (exit code 2, like a bad config)."""


__all__ = ["DataError", "TrainingError"]
