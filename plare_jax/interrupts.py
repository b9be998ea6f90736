"""Stopping a long run on Ctrl-C (SIGINT) or SIGTERM: the handler sets a flag, the loops check it.

Why not let KeyboardInterrupt surface: Python raises it wherever the main thread happens to
be when the signal arrives, e.g. inside a garbage-collection callback of JAX, where it is
printed as "Exception ignored in ..." and lost, and the run goes on to the end. Here the
first signal only records itself; the long loops (training chunks, evaluation steps, video
frames) call `StopFlag.check()` between units of work, which raises `StopRequested` at a
point where stopping is safe. A second signal raises `StopRequested` at once from the
handler, for a loop that does not check (press Ctrl-C twice to stop immediately).

    with stop_on_signals() as stop:
        try:
            for chunk in chunks:
                train(chunk)
                stop.check()
        except StopRequested as stopped:
            print("interrupted; resume with ...")
            sys.exit(stopped.exit_code)     # 130 for SIGINT, 143 for SIGTERM
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

__all__ = ["StopRequested", "StopFlag", "stop_on_signals", "exit_code_for", "never_stop", "raise_if_stopped"]


def exit_code_for(signum: int) -> int:
    """The shell convention for a process stopped by signal `signum`: 128 + signum (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


class StopRequested(Exception):
    """A stop was requested by a signal (or by `StopFlag.request`).

    Attributes:
        signum: the signal number (signal.SIGINT for Ctrl-C).
        exit_code: 128 + signum, what the process should exit with.
    """

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        self.exit_code = exit_code_for(self.signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")


class StopFlag:
    """Whether a stop was requested, and by which signal. Callable: `flag()` is True once requested.

    Thread-safe to read; `request` is what the signal handler calls.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self._event.is_set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum: int = signal.SIGINT) -> None:
        """Records a stop request (the first signal number wins)."""
        if self.signum is None:
            self.signum = int(signum)
        self._event.set()

    def check(self) -> None:
        """Raises `StopRequested` if a stop was requested; otherwise returns at once."""
        if self._event.is_set():
            raise StopRequested(self.signum if self.signum is not None else signal.SIGINT)


def never_stop() -> bool:
    """A `should_stop` that never asks to stop (the default of the loops that take one)."""
    return False


def raise_if_stopped(should_stop) -> None:
    """Raises `StopRequested` (with the flag's signal when it has one) if `should_stop()` is true."""
    if should_stop is not None and should_stop():
        raise StopRequested(getattr(should_stop, "signum", None) or signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    """Installs flag-setting handlers for `signals` for the duration of the block, then restores the previous ones.

    The first signal sets the flag; a second one (any of `signals`) raises `StopRequested`
    from the handler. Outside the main thread (where Python cannot install handlers) the
    flag is still yielded, and only `StopFlag.request` sets it.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise StopRequested(signum)
        flag.request(signum)

    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
