"""The one error type a user of the command lines meets: a problem they can fix.

Every error raised for a bad option, file, dataset, label store or VLM server derives from
`PlareError` (as well as from the builtin type it has always been, so `except ValueError` keeps
working). Its message says what is wrong and what to do about it, in the command line's words
(option names, not library fields). The scripts in experiments/ catch this one type through
`exit_on_user_error`, print the message and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["PlareError", "OutputExistsError", "USER_ERROR_EXIT_CODE", "exit_on_user_error"]

USER_ERROR_EXIT_CODE = 2  # what argparse/tyro use for a bad command line


class PlareError(Exception):
    """A problem in the user's input or environment; the message says what to do."""


class OutputExistsError(PlareError, FileExistsError):
    """An output directory that exists already (nothing is ever overwritten unasked)."""


def exit_on_user_error(main: Callable[[], Any]) -> int:
    """Runs `main()`; a `PlareError` becomes "error: MESSAGE" on stderr and exit code 2, success 0.

    The whole body of every experiments/ CLI: new failure modes need no edit there, only an
    error class that derives from `PlareError`.
    """
    try:
        main()
    except PlareError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0
