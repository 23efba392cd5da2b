"""A cluster instance whose database writes hang stops promptly (DESIGN 3.12).

A partition behind a middlebox that acknowledges every packet and forwards none (a proxy, a peer
TCP stack that is still up) leaves a query waiting for an answer that never comes: no timeout of
the client's fires (nothing is unacknowledged, keep-alives are answered). The instance must still
give up its site while it cannot reach the database, and exit cleanly on SIGTERM within seconds.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from adapters.cluster.ownership import LEASE_S
from adapters.oscp.simulator import GridOperatorSimulator
from tests.cluster_servers import NatsServer
from tests.e2e.cluster import Instance, cluster_config
from tests.e2e.test_cluster_ownership import wait_for
from tests.e2e.test_service import blocks
from tests.tcp_proxy import TcpProxy

STOP_S = 10.0
"""Far below what a hang costs (the harness's 15 s, then kill -9), far above a clean stop (1-3 s)."""


async def test_an_instance_whose_database_writes_hang_gives_up_its_site_and_stops_on_sigterm(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    url = urlsplit(pg_url)
    proxy = TcpProxy("127.0.0.1", int(url.port or 5432))
    a = Instance(tmp_path, "a", cluster_config(1), f"postgresql://postgres@127.0.0.1:{proxy.port}{url.path}",
                 nats_server.url)
    try:
        a.start()
        await asyncio.to_thread(wait_for, lambda: a.controlled() == {"s0"}, 30, "a to control its site")
        proxy.cut()
        # The grid operator's forecast must be stored first: its write goes into the proxy and stays there.
        grid = GridOperatorSimulator(fp_url=f"{a.url}/oscp/fp/2.0", fp_token="oscp-token")
        await grid.start()
        try:
            assert await grid.send_forecast("s0", blocks(3.0)) == 503
        finally:
            await grid.stop()
        await asyncio.to_thread(wait_for, lambda: a.controlled() == set(), LEASE_S + 3, "a to give up its site")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(a.proc.wait, STOP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {STOP_S:g} s after SIGTERM") from None
        assert code == 0
        log = (tmp_path / "a" / "service.log").read_text()
        assert "service stopped" in log
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        proxy.close()
