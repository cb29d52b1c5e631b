"""Errors that the CLI turns into one line on stderr and an exit code, never a traceback.

Library code raises these for problems caused by the user's input or environment; anything else is a bug and is
reported as an internal error.
"""

from __future__ import annotations


class FacecliError(Exception):
    """A failure the user can act on. Exit code 1."""

    exit_code = 1


class UsageError(FacecliError):
    """Bad options, missing input files or folders. Exit code 2."""

    exit_code = 2


class CorruptFileError(FacecliError):
    """A data file (record file, benchmark, gallery, checkpoint) is damaged or not what it claims to be."""
