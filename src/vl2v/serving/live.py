"""Run the embedding service in a background thread on a free loopback port (tests, notebooks)::

    with LiveServer(create_app(teacher, ServiceConfig(data_dir))) as srv:
        teacher = create_teacher(f"remote:{srv.url}", api_key=key)

``app`` may be any ASGI app, e.g. the service wrapped in a fault-injecting middleware.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Any


class LiveServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", log_level: str = "warning", **uvicorn_options: Any) -> None:
        import uvicorn

        self.host = host
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])
        options = dict(log_level=log_level, lifespan="off", server_header=False, timeout_keep_alive=5)
        options.update(uvicorn_options)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"vl2v-serve-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"embedding service on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float, interval: float = 0.1) -> bool:
    """Poll a service started as a separate process (``vl2v serve``) until its health endpoint answers 200.

    False when ``proc`` exits or ``timeout`` seconds pass first.
    """
    import httpx

    from vl2v.teachers.wire import HEALTH_PATH

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + HEALTH_PATH, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(interval)
