"""Domain errors. The core raises these; the CLI turns each into one `Error: ...` line and exit 1
(a ChoiceError, a malformed command line, into click's usage error: exit 2).

Every message names the file, column or option at fault and says how to fix it.
"""

from __future__ import annotations


class CartoError(Exception):
    """Base class for every error carto reports to a user."""


class LogFormatError(CartoError):
    """A training log part (or the set of parts) breaks the log contract."""


class CartoOutputError(LogFormatError):
    """A file passed as a log part is one of carto's own outputs (a scores file, a manifest: its
    Parquet metadata holds `carto.provenance`), not a log part. `kind` is what it is."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnreadablePartError(LogFormatError):
    """A log part that cannot be read as it is: not a Parquet file (a truncated part, say), or
    damaged inside (a page that fails to decode or its checksum, values that contradict its footer):
    what `--skip-corrupt` may leave out. `reason` is the message without the path and the hint;
    `path` the part (None where it is not known)."""

    def __init__(self, message: str, reason: str, path: object = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path

    def __reduce__(self):  # every argument through pickle (a Ray task may raise it)
        return type(self), (str(self), self.reason, self.path)


class ScoresFormatError(CartoError):
    """A file passed as scores, manifest or weights is not one carto wrote."""


class OptionError(CartoError):
    """An option value is out of range or inconsistent with the data."""


class ChoiceError(OptionError):
    """An option's value is not one of its choices (a fixed list, or the columns of the file it
    names): a malformed command line, which the CLI reports as click does its own usage errors,
    `Error: ...; see `carto CMD --help``, with exit status 2 (not 1). The message names the option,
    the value and the choices."""


class DatasetError(CartoError):
    """A dataset or id list passed in (`carto inspect --data`, `--ids`) cannot be read or does not fit."""


class MissingDependencyError(CartoError):
    """An optional dependency (an extra) is not installed."""


def require_torch():
    """Import torch, or raise a MissingDependencyError with the install hint."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise MissingDependencyError(
            "torch is not installed; the logging shim and samplers need it: "
            "pip install 'carto-cli[torch]'"
        ) from exc
    return torch


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
