"""A small HTTP/2-over-TLS server on asyncio and h2, the base of the fake APNs and FCM.

Subclasses answer requests in `handle` (None = never answer that stream). Responses are
delayed by an injected latency without blocking other streams. `goaway_after` cuts the
first connection that receives more requests than that (once per server): GOAWAY naming the
last stream answered, then the socket is gone and its waiting streams are never answered.
"""

import asyncio
import os
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes as ErrorCode
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError

from tests.fakes.tls import loopback_tls


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    has_client_cert: bool


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # Instead of answering: reset the stream (RST_STREAM), or drop the whole connection.
    reset: bool = False
    drop: bool = False


def write_count(path: str, count: int) -> None:
    """For the benchmark, which reads the file at any moment: never seen half-written."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.write(str(count))
    os.replace(temporary, path)


class H2Server:
    name = "fake-h2"

    def __init__(
        self,
        *,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        max_streams: int = 1000,
        client_ca_file: str | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.max_streams = max_streams
        self.client_ca_file = client_ca_file
        self.goaway_after: int | None = None
        self._goaway_sent = False
        self.lock = threading.Lock()
        self.port = 0
        self.connections = 0
        self._connections: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        # The benchmark's processes run on uvloop, as the servers they answer do: the
        # default loop's own overhead was a share of the fake's CPU on a shared machine.
        self.loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop

    def handle(self, request: Request) -> Response | None:
        raise NotImplementedError

    def sent(self, request: Request, response: Response) -> None:
        """Called once a response has actually been written."""

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext:
        context = loopback_tls().server_context(alpn=["h2"])
        if self.client_ca_file:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cafile=self.client_ca_file)
        return context

    def start(self, port: int = 0) -> Any:
        ready = threading.Event()

        def run() -> None:
            loop = self.loop_factory()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(self), "127.0.0.1", port, ssl=self._ssl_context()
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        server, loop, connections = self._server, self._loop, self._connections

        async def shutdown() -> None:
            server.close()
            for connection in connections:
                # Answers still waiting for their latency are dropped (`_answer`).
                connection.closed = True
                if connection.transport is not None:
                    connection.transport.abort()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(5)
        loop.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.count = 0
        self.closed = False
        self.has_client_cert = False
        self.last_answered = 0
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        self.has_client_cert = bool(ssl_object and ssl_object.getpeercert())
        self.server.connections += 1
        self.server._connections.append(self)
        self.conn.initiate_connection()
        self.conn.update_settings({0x3: self.server.max_streams})  # MAX_CONCURRENT_STREAMS
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def _flush(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            if self.transport:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self.streams.pop(event.stream_id)
                self._request(event.stream_id, headers, bytes(body))
            elif isinstance(event, StreamReset):
                self.streams.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated) and self.transport:
                self.transport.close()
        self._flush()

    def _request(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        self.count += 1
        server = self.server
        if self.closed:
            return  # arrived after this connection's GOAWAY: never processed
        if (
            server.goaway_after is not None
            and not server._goaway_sent
            and self.count > server.goaway_after
        ):
            server._goaway_sent = True
            # The streams still waiting were not processed: the client must send them again.
            self.conn.close_connection(last_stream_id=self.last_answered)
            self._flush()
            if self.transport:
                self.transport.close()
            self.closed = True
            return
        request = Request(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers=headers,
            body=body,
            has_client_cert=self.has_client_cert,
        )
        response = server.handle(request)
        if response is None:
            return  # never answered, like the streams Apple forgets
        lo, hi = server.latency_ms
        delay = random.uniform(lo, hi) / 1000 if hi > 0 else 0.0
        # A timer, not a task and its sleep per stream (with the one write per turn below, the
        # benchmark's fake APNs went from 52% to 49% of a core at ~2,000 answers/s); an answer
        # falling due after the connection is gone is dropped by `_answer`.
        asyncio.get_running_loop().call_later(delay, self._answer, stream_id, request, response)

    def _answer(self, stream_id: int, request: Request, response: Response) -> None:
        if self.closed:
            return
        if response.drop:
            self.closed = True
            if self.transport:
                self.transport.abort()
            return
        if response.reset:
            try:
                self.conn.reset_stream(stream_id, ErrorCode.INTERNAL_ERROR)
            except ProtocolError:
                return
            self._flush()
            return
        headers: list[tuple[str, str]] = [(":status", str(response.status)), *response.headers]
        try:
            if response.body:
                headers.append(("content-length", str(len(response.body))))
                self.conn.send_headers(stream_id, headers)
                self.conn.send_data(stream_id, response.body, end_stream=True)
            else:
                self.conn.send_headers(stream_id, headers, end_stream=True)
        except ProtocolError:
            return
        self.last_answered = max(self.last_answered, stream_id)
        self.server.sent(request, response)
        # One write for the answers falling due together (the timers of one turn of the loop).
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()
