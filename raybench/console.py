"""A quiet console: raybench's own lines only, unless `-v/--verbose`.

Libraries under raybench talk on their own: MLflow's INFO lines (database set-up, registry
versions), its pyfunc type-hint warning (with ANSI colour codes), one "Downloading artifacts"
progress bar per file it fetches, Ray's token-auth notice, Optuna's experimental-feature
warnings. raybench says what matters itself (e.g. `ray: local instance on 127.0.0.1, token auth
on`), so by default these go; `verbose=True` leaves every library as it is.

Set before the libraries are imported where it can be (environment variables are read by Ray's
workers too, which inherit them from the driver's processes).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

# loggers raybench quiets to ERROR (their WARNING/INFO lines restate what raybench prints)
QUIET_LOGGERS = ("mlflow", "alembic", "optuna", "ray._private.authentication",
                 "ray._private.authentication.authentication_token_setup", "ray.tune", "ray.train", "ray.air",
                 "ray.serve", "ray.data", "ray._private.worker", "urllib3", "filelock", "timm")
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one tqdm bar per downloaded file
    "PYTHONWARNINGS": "ignore",  # Ray's trial workers (their own interpreters) inherit it
    "RAY_DEDUP_LOGS": "1",
    "TQDM_DISABLE": "1",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "RAYBENCH_QUIET": "1",  # read by quiet_mode(): e.g. the sweep keeps Ray's worker output off the console
}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def quiet(verbose: bool = False) -> None:
    """Silence library noise for this process and the Ray workers it starts (see module docstring)."""
    if not sys.stdout.isatty():  # a pipe or a file: no colour codes, ours or Ray's worker prefixes
        os.environ.setdefault("NO_COLOR", "1")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")  # library UserWarnings, FutureWarnings, DeprecationWarnings
    # MLflow re-allows its own (`simplefilter("once")` inside its calls): drop them where shown
    warnings.showwarning = _drop_warning
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_mode() -> bool:
    """Whether this process was asked to be quiet (the CLI without -v)."""
    return os.environ.get("RAYBENCH_QUIET") == "1"


def _drop_warning(*args, **kwargs) -> None:
    """Quiet mode's warnings.showwarning: nothing (`-v` keeps Python's)."""


def plain(text: str) -> str:
    """`text` without ANSI escape codes (for a pipe or a file, where they are noise)."""
    return ANSI.sub("", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`raybench -h`: every flag says its default (unless its help already does, or it has none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) \
                and action.option_strings and action.nargs != 0:
            text += f" (default: {action.default})"
        return text
