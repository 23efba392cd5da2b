"""No process of the service outlives a kill -9 of it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

from tests.e2e.service import ServiceProcess
from tests.e2e.test_crash_and_disk import counter, kill_9
from tests.e2e.test_service import CONFIG, fleet, until


async def test_no_child_process_outlives_a_kill_9(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, CONFIG).start()
    assert service.proc is not None
    chargers = fleet(service.ocpp_url, 2)
    for c in chargers:
        c.start()
    children: list[psutil.Process] = []
    try:
        await until(lambda: counter(service, "plans") >= 1)  # the planner's worker process exists
        children = psutil.Process(service.proc.pid).children(recursive=True)
        assert any("multiprocessing" in " ".join(p.cmdline()) for p in children), children
        kill_9(service)
        await until(lambda: not [p for p in children if _alive(p)], timeout=5)
    finally:
        for c in chargers:
            await c.stop()
        if service.proc.poll() is None:
            service.stop()
        for p in children:  # what the old code left behind
            with contextlib.suppress(psutil.Error):
                p.kill()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

