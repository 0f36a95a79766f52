"""``python -m mfd_loss.cli ARGS``: the ``mfd-loss`` command (the form ``torchrun`` launches)."""

from __future__ import annotations

from .commands import main

if __name__ == "__main__":
    raise SystemExit(main())
