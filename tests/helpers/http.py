"""A real HTTP server on the loopback interface, so download tests run the real network code path."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # nothing listens there: connections are refused at once


class FileServer:
    """Serves the files of ``folder`` at ``http://127.0.0.1:<port>/<name>`` and records request paths."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        recorder = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                recorder.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
