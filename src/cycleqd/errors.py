"""Exceptions shared by every layer.

Each error message says what was wrong and what to do about it, so the command line can print it as is.
"""


class CycleQDError(Exception):
    """Base class for errors that the command line reports without a traceback."""


class ModelLoadError(CycleQDError):
    """A model folder, file or hub id cannot be read."""


class ModelMismatchError(CycleQDError):
    """Base model and experts do not share names, shapes or architecture, or hold non-finite values."""


class ConfigError(CycleQDError):
    """A configuration file is invalid."""
