"""The client's keep-alive wire against a real (standard library) HTTP server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serving.client import KeepAliveWire


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.client_address[1], self.path, body, self.headers.get("X-Test", "")))
        reply = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        # an idle keep-alive connection the server drops without saying so (as a keep-alive timeout does)
        self.close_connection = self.server.drop_after_reply

    def log_message(self, *_: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    seen: list[tuple[int, str, bytes, str]]
    drop_after_reply = False


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, prefix: str = "") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{prefix}"


def test_sequential_requests_share_one_connection(server: _Server) -> None:
    wire = KeepAliveWire(_url(server), 5)
    for k in range(5):
        reply = wire.send("POST", "/v1/query", f"body-{k}".encode(), {"X-Test": str(k)})
        assert reply.status_code == 200 and reply.json() == {"ok": True}
        assert reply.headers["content-type"] == "application/json"
    wire.close()
    ports = {port for port, *_ in server.seen}
    assert len(ports) == 1
    assert [(p, b, h) for _, p, b, h in server.seen] == [
        ("/v1/query", f"body-{k}".encode(), str(k)) for k in range(5)
    ]


def test_an_idle_connection_the_server_dropped_is_replaced_and_the_request_sent_once(server: _Server) -> None:
    server.drop_after_reply = True
    wire = KeepAliveWire(_url(server), 5)
    for k in range(3):
        assert wire.send("POST", "/v1/query", f"b{k}".encode(), {}).status_code == 200
    wire.close()
    assert [b for *_, b, _h in server.seen] == [b"b0", b"b1", b"b2"]  # each once, none lost or repeated
    assert len({port for port, *_ in server.seen}) == 3


def test_a_path_prefix_in_the_service_url_is_kept(server: _Server) -> None:
    wire = KeepAliveWire(_url(server, "/pcc/"), 5)
    wire.send("POST", "/v1/query", b"{}", {})
    wire.close()
    assert server.seen[0][1] == "/pcc/v1/query"


def test_a_service_that_is_not_there_raises_httpx_connect_error(server: _Server) -> None:
    url = _url(server)
    server.shutdown()
    server.server_close()
    with pytest.raises(httpx.ConnectError):
        KeepAliveWire(url, 2).send("POST", "/v1/query", b"{}", {})


def test_a_url_that_is_not_http_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ftp://x"):
        KeepAliveWire("ftp://x", 5)
