"""A TCP proxy the test controls, to cut a client off its server as a network partition does.

``cut()``: nothing flows any more. The client's side stays open and silent (the client learns
nothing until its own timeouts fire); the server's side is closed at once, as if the server's TCP
keep-alive had already given up on the client: the earliest moment the server can free what
the client held, the hardest case for the client to have stopped in time. New connections hang
until ``heal()``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.flowing = threading.Event()
        self.flowing.set()
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self._stop.set()
        self.flowing.set()
        self.listener.close()
        for a, b in self._pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        self.flowing.wait()  # a new connection during a partition hangs, as with a dead route
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._pairs.append((client, server))
        peers = {client: server, server: client}
        try:
            while not self._stop.is_set():
                if not self.flowing.is_set():
                    server.close()  # the server gives up on the client; the client hears nothing
                    peers = {}
                    self._stop.wait(0.1)
                    continue
                if not peers:
                    return
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
