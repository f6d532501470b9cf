"""A webhook on this machine for the notification tests: a real HTTP server on 127.0.0.1 (a free port)
that keeps each JSON body Apprise's `json://` target posts to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    def __init__(self, status: int = 200) -> None:
        self.messages: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.messages.append({"path": self.path, **json.loads(body or b"{}")})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):  # quiet: pytest shows what matters
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    @property
    def secret_url(self) -> str:
        """The webhook as a target with secrets in it: a password, and a token in its path."""
        return f"json://oomladder:s3cret@127.0.0.1:{self.port}/hook/T0KEN-abcdef"

    def titles(self) -> list[str]:
        return [m.get("title", "") for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused at once."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
