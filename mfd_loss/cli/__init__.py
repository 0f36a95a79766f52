"""The ``mfd-loss`` command line: ``demo``, ``train``, ``export``, ``download``, ``push`` and ``info``.

``mfd-loss ARGS`` and ``python -m mfd_loss.cli ARGS`` (the form ``torchrun`` launches) run :func:`main`.
The subcommands live in :mod:`mfd_loss.cli.commands` (``train``, ``export``, the parser and error
reporting), :mod:`mfd_loss.cli.hub` (``download``, ``push``, ``info``) and :mod:`mfd_loss.cli.demo`.
"""

from __future__ import annotations

from .commands import build_parser, main, train_settings

__all__ = ["main", "build_parser", "train_settings"]
