"""The one exception type embedfm raises for problems a user can fix.

Anything raised as `EmbedfmError` reaches the command line as a single line on stderr and exit
code 2 (see `cli.py`); everything else is a bug and keeps its traceback.
"""


class EmbedfmError(Exception):
    """A user-fixable problem: bad input data, a bad flag, a run dir in the wrong state."""


class DataError(EmbedfmError):
    """A Fashion-MNIST file is missing, truncated, corrupt or inconsistent."""


class ConfigError(EmbedfmError):
    """A configuration value is out of range or inconsistent with another."""


class CheckpointError(EmbedfmError):
    """A run dir has no usable checkpoint, or one this version cannot read."""


class StorageError(EmbedfmError):
    """A file could not be written (disk full, read-only, no permission); the previous file is kept."""


class BusyError(EmbedfmError):
    """Another embedfm process is writing the same run dir, report dir or index dir."""


class NonFiniteError(EmbedfmError):
    """Training diverged: a loss, weight, buffer, logit or embedding stopped being a finite number."""


def one_line(e: BaseException) -> str:
    """An exception from a library as a short single line, for inside an error message (its own text may span
    lines or run to kilobytes)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
