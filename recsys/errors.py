"""Errors that describe a user mistake (bad config, bad file, bad value).

Every entry point catches :class:`RecsysError` and prints its message alone, with
no traceback: the message itself must name the file, key, field or value at fault.
"""


class RecsysError(Exception):
    """Base class for errors a user can fix; ``str(err)`` is the whole story."""


class ConfigError(RecsysError):
    """A config file or ``--set`` override is missing, malformed or inconsistent."""


class DataError(RecsysError):
    """An input data file is missing, unreadable, empty or in an unexpected format."""


class ArtifactError(RecsysError):
    """A stage's output (manifest, shard, model, index) is missing, stale or corrupt."""


class WorkerLostError(RecsysError):
    """Another Horovod rank died or became unreachable; training stopped (resume with --resume)."""
