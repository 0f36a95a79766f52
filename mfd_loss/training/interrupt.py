"""Stopping a training loop cleanly on SIGTERM / SIGINT.

A scheduler (SLURM, Kubernetes, a CI runner, a session ending) sends SIGTERM some seconds before it kills a
job; Ctrl-C sends SIGINT. :class:`StopRequested` turns either into a flag that the loop reads after each
step, so the loop writes its checkpoint and returns instead of dying between two checkpoints (losing up to
``checkpoint_every`` steps). Used by :func:`mfd_loss.train_feature_map` and the training examples.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopRequested", "exit_status", "stop_reason"]


class StopRequested:
    """Context manager: while inside, SIGTERM and SIGINT set :attr:`flag` (and :attr:`signum`) instead of stopping.

    The previous handlers come back on exit. Outside the main thread (where Python cannot install signal
    handlers) it does nothing and :attr:`flag` stays False. Combine the flag of every process with
    :func:`mfd_loss.training.distributed.max_over_processes` so all processes of a DDP run stop at the same step.
    """

    def __init__(self) -> None:
        self.flag = False
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_reason(halt: int) -> str | None:
    """Name the halt code a training loop agreed on (``max_over_processes``): 0 -> None (it ran on),
    1 -> ``"max_minutes"`` (a time limit), a signal number -> its name (``"SIGTERM"``, ``"SIGINT"``)."""
    if halt == 0:
        return None
    return "max_minutes" if halt == 1 else signal.Signals(halt).name


def exit_status(stopped_by: str | None) -> int:
    """The process exit status for a run that stopped for ``stopped_by``.

    0 for a finished run (``None``) or one stopped by a time limit (``"max_minutes"``); 128 + the signal number
    for ``"SIGINT"`` (130) and ``"SIGTERM"`` (143), the shell's convention, so a scheduler sees the run did not
    finish. Raises ValueError for any other value.
    """
    if stopped_by in (None, "max_minutes"):
        return 0
    if stopped_by in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, stopped_by))
    raise ValueError(f"stopped_by must be None, 'max_minutes', 'SIGINT' or 'SIGTERM', got {stopped_by!r}")
