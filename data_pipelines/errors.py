"""User errors: bad input that the user fixes (a missing file, an unset or impossible setting), as opposed
to bugs. Every command-line entry point (`mvlm ...`, `python -m mvlm_jax.train`, `make ...`) prints a
UserError as one line, `error: MESSAGE`, and exits with EXIT_CODE; any other exception keeps its traceback.

The message names what is missing or wrong (the file, directory, flag or config key) and what to set or run.
The subclasses are also the built-in exception a caller expects (ValueError, FileNotFoundError), so code that
catches those keeps working. This module is the one home of the class: data_pipelines raises it without
importing mvlm_jax, and mvlm_jax imports it from here.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

EXIT_CODE = 2  # as argparse's usage errors

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input; the message says what to set or run."""


class BadInput(UserError, ValueError):
    """A setting (flag, config key) that is unset, unknown or impossible, or a file that is unusable."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory the command reads is not there."""


def report(error: UserError) -> int:
    """Print `error: MESSAGE` to stderr; returns EXIT_CODE."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return EXIT_CODE


def user_errors(main: F) -> F:
    """Decorate an entry point's main: a UserError becomes `error: MESSAGE` and EXIT_CODE (returned, so
    that `sys.exit(main())` and absl's app.run exit with it); other exceptions propagate with tracebacks."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            return report(error)

    return wrapped  # type: ignore[return-value]
