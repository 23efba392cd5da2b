"""``balancer serve --config PATH``: load and check the config, run a ``Service`` until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from adapters.app import Service
from adapters.config_file import load_config, placeholder_secrets
from adapters.logs import setup_logging
from balancer.errors import InvalidInput
from balancer.model import Config

__all__ = ["run_serve"]

log = logging.getLogger("balancer.service")


async def _serve(config: Config, config_path: Path) -> int:
    service = Service(config, config_path=config_path)
    await service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_config)
    print(f"balancer serving: http://{config.http.host}:{service.http_port} "
          f"ws://{config.ocpp.host}:{service.ocpp.port}/ocpp/{{charger_id}}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await service.stop()
    return 0


def run_serve(args: Any) -> int:
    """``balancer serve --config PATH [--log-format json|text] [--log-level LEVEL]``."""
    setup_logging(getattr(args, "log_format", "json"), getattr(args, "log_level", "INFO"))
    path = Path(args.config)
    try:
        config = load_config(path)
    except InvalidInput as exc:
        print(f"{path}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return 2
    placeholders = placeholder_secrets(config)
    if placeholders:
        print(f"{path}: refusing to serve with {len(placeholders)} placeholder secret(s)", file=sys.stderr)
        for problem in placeholders:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, path))
