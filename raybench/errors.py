"""Errors that carry the offending path, so a user can fix the file and rerun."""
from __future__ import annotations


class RaybenchError(Exception):
    """Base class: every error raybench raises on purpose."""


class DatasetError(RaybenchError):
    """A dataset is missing, malformed, or holds an unreadable file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(RaybenchError):
    """A config or search space names an unknown field, or a value of the wrong type."""


class WeightsError(RaybenchError):
    """Backbone weights could not be had the way they were asked for."""


class TrackingError(RaybenchError):
    """The MLflow store cannot be reached or written."""


class SweepInterrupted(RaybenchError):
    """The sweep was stopped (Ctrl-C) before every trial ended; `--resume` finishes it."""


class ExportError(RaybenchError):
    """An exported model does not score what the torch model scores."""


class ImageInputError(RaybenchError):
    """Bytes sent to be scored are not a usable image; `status` is the HTTP status that says so
    (400: not an image of an accepted format, or truncated; 413: more pixels or bytes than the
    limits; 422: pixels or a score that are not finite, so no verdict can be given)."""

    def __init__(self, problem: str, status: int = 400):
        self.problem, self.status = problem, status
        super().__init__(problem)


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for a near miss among `known` (difflib), else ''."""
    import difflib
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_name(what: str, name: str, known) -> str:
    """'unknown method patchcor (did you mean patchcore?); known: a, b' in plain words."""
    return f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(str(k) for k in known)}"
