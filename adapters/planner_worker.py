"""The planner's worker process: it runs the LP and dies with the service that started it.

A ``kill -9`` of ``balancer serve`` gives its children no chance to be told, and a spawned
worker would otherwise live on (about 100 MB) and keep the multiprocessing resource tracker
alive with it (the tracker exits when the last holder of its pipe is gone). On Linux the kernel
kills the worker when its parent goes (``prctl(PR_SET_PDEATHSIG)``); everywhere a watcher thread
ends it when its parent process changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from adapters.highs_quiet import silence_highs_banner

__all__ = ["init_worker", "planner_executor"]

PR_SET_PDEATHSIG = 1
WATCH_EVERY_S = 0.5


def planner_executor() -> ProcessPoolExecutor:
    """One spawned worker for the LP, tied to this process's life."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))


def init_worker(parent_pid: int) -> None:
    """Worker initializer: die with ``parent_pid``, and keep HiGHS's banner off stdout."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        # Sent when the thread that spawned us exits; the watcher below covers the rest.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()
    silence_highs_banner()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_EVERY_S)
    os._exit(1)
