"""Common.http.Session: fresh connection after an idle pause, idempotent retries on a dropped connection,
POST never re-sent. Real sockets on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from Common import http


class _PortEcho(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PortEcho)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_connections_are_reused_in_a_burst_and_replaced_after_an_idle_pause(echo: str) -> None:
    s = http.Session(max_idle=0.3)
    first = s.get(echo, timeout=5).text
    assert s.get(echo, timeout=5).text == first  # keep-alive within the burst
    time.sleep(0.6)
    assert s.get(echo, timeout=5).text != first  # a new connection after the pause


class _DropOnce:
    """Closes the next connection after reading its request (no answer) when armed; answers otherwise."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.requests: list[bytes] = []
        self.armed = False
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = conn.recv(65536)
                self.requests.append(data.split(b"\r\n", 1)[0])
                if self.armed:
                    self.armed = False
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_a_get_on_a_dropped_connection_is_retried_and_a_post_is_not() -> None:
    server = _DropOnce()
    try:
        server.armed = True
        with pytest.raises(requests.ConnectionError):
            requests.Session().get(server.url, timeout=5)  # the plain session gives up
        server.armed, server.requests[:] = True, []
        assert http.Session().get(server.url, timeout=5).text == "ok"
        assert [r.split()[0] for r in server.requests] == [b"GET", b"GET"]

        server.armed, server.requests[:] = True, []
        with pytest.raises(requests.ConnectionError):
            http.Session().post(server.url, json={}, timeout=5)
        assert [r.split()[0] for r in server.requests] == [b"POST"]
    finally:
        server.close()
