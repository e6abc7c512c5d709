"""User-facing errors.

Every error a user can cause (bad file, bad config, wrong shapes, NaN, unknown env id) is raised as an ``RlftError``
subclass whose message names the thing at fault. The CLI prints the message (no traceback) and exits with code 2.
"""


class RlftError(Exception):
    """Base class of errors caused by user input; the message names the file/field at fault."""


class ConfigError(RlftError):
    """A config file or command-line override is invalid (unknown field, wrong type, bad value)."""


class DatasetError(RlftError):
    """A dataset file is missing, corrupt, lacks keys, has wrong shapes/dtypes or non-finite values."""


class CheckpointError(RlftError):
    """A checkpoint is missing, corrupt, or does not match the environment/config it is used with."""


class EnvError(RlftError):
    """An environment id is unknown or an environment cannot be created."""


class TrainingError(RlftError):
    """Training diverged (e.g. a loss became NaN); the message names the metric and step."""


class NoSuccessError(RlftError):
    """A collection that keeps successful episodes only found none in all its ``attempts``."""

    def __init__(self, message: str, attempts: int = 0):
        super().__init__(message)
        self.attempts = attempts
