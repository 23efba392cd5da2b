"""HiGHS prints a banner on stdout the first time a ``Highs`` object is created, whatever its
options (STACK.md). Create one at start-up with file descriptor 1 pointed at /dev/null, so the
banner never lands in a CLI's JSON or the demo's progress display."""

from __future__ import annotations

import os
import sys

__all__ = ["silence_highs_banner"]

_done = False


def silence_highs_banner() -> None:
    global _done
    if _done:
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    _done = True
