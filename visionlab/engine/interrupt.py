"""Ctrl-C and SIGTERM stop a training run cleanly: after the step in progress, with
``last.pt`` saved and the command to continue printed (what a batch scheduler's SIGTERM
and a user's Ctrl-C both mean: "stop, but keep the work"). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

# the exit status of a run stopped by a signal, as a shell reports it: 128 + signal number
EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}


class StopRequest:
    """A context manager that turns SIGINT / SIGTERM into a request (:attr:`signal`).

    Handlers are installed only in the main thread (elsewhere Python allows none) and the
    previous ones are restored on exit. ``say`` prints the line that acknowledges the first
    signal. Set :attr:`immediate` to raise KeyboardInterrupt at the first signal (for loops
    that cannot stop between steps, such as R-CNN's stages: each finished stage is saved).
    """

    def __init__(self, *, say: Callable[[str], None] = print) -> None:
        self.immediate = False
        self.say = say
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.immediate or self.signal is not None:
            self.signal = self.signal or name
            raise KeyboardInterrupt
        self.signal = name
        self.say(
            f"{name}: stopping after this step and saving last.pt "
            "(press Ctrl-C again to stop at once, losing this step)"
        )
