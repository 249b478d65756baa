"""Errors raised for bad user input.

Every error a user can cause (a malformed annotation, a missing proposal file, an
unknown config key, a damaged bitstream) is one of these; the CLIs print the message
and exit with status 2 instead of showing a traceback.
"""


class IncdetError(Exception):
    """Base class: a problem with the user's input, with a message that says what and where."""


class DataError(IncdetError, ValueError):
    """A dataset file is missing or malformed. The message names the file and the problem."""


class ConfigError(IncdetError, ValueError):
    """A configuration is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(IncdetError):
    """A checkpoint or run directory cannot be used."""
