"""A small asyncio HTTP/2 client for APNs and FCM, on the `h2` state machine.

Why not httpx or httpcore: on the notify path every send cost ~3x more through them (anyio
streams, per-request locks and event queues; bench/README.md), and a GOAWAY failed the
streams the server never processed instead of sending them again. Why not aioapns for APNs:
it takes any h2 error for a dead connection and leaves that connection in its pool, busy for
good, so a few oversized payloads stop every APNs send of the process. This client does only
what the senders need: POST with a body, over TLS with ALPN "h2", as many streams per connection as
the server's SETTINGS allow, up to `max_connections` connections, flow control both ways
(bodies framed to the peer's frame size), and a request whose connection broke before its
answer (GOAWAY, REFUSED_STREAM, a reset connection) sent once more on another connection.
An error about one stream ends that stream; a connection whose state is broken is closed at
once. Timeouts are the caller's (asyncio.timeout around `post`); a cancelled request resets
its stream.
"""

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error

from delivery.header_encoder import Encoder


class ConnectionFailed(Exception):
    """The connection (or the stream) ended before the request's answer came."""


class StreamFailed(Exception):
    """h2 refused to send this request (a frame or header it cannot encode): the request is
    at fault, not the connection, which stays in use. Not sent again."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    content: bytes


def skip_outbound_checks(config: H2Configuration) -> H2Configuration:
    """Our upstream connections' h2 settings: outbound header checks off.

    They re-validate, header by header through a chain of generators, the few fixed header
    lists our own code builds (lowercase names, no connection headers), and cost half of
    what h2 spends on a request's headers (123 vs 58 us for APNs', bench/h2_headers.py).
    The fakes in tests/ check what arrives. What comes back from Apple and Google is still
    validated."""
    config.validate_outbound_headers = False
    config.normalize_outbound_headers = False
    return config


def client_config() -> H2Configuration:
    return skip_outbound_checks(H2Configuration(client_side=True, header_encoding=None))


@dataclass(slots=True)
class _Stream:
    future: "asyncio.Future[Response]"
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.h2 = H2Connection(client_config())
        # What h2 uses of hpack's encoder, for our requests' headers (header_encoder.py).
        self.h2.encoder = Encoder()  # type: ignore[assignment]
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A write is due at the end of this turn of the loop (`_flush`).
        self._flush_due = False
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.window_opened = asyncio.Event()
        self.lost = asyncio.Event()  # the socket is gone (connection_lost ran)
        # The server's SETTINGS arrived: until then its stream limit is unknown, and a server
        # may refuse (or drop the connection over) streams beyond its default.
        self.settled = asyncio.Event()

    # --- the protocol, called by the event loop ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self._fail_all(ConnectionFailed(f"HTTP/2 protocol error: {e}"))
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    headers = dict(event.headers or [])
                    stream.status = int(headers.get(b":status", b"0"))
                    stream.headers = headers
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body.extend(event.data or b"")
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, StreamEnded):
                stream = self.streams.pop(event.stream_id or 0, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_result(
                        Response(stream.status, stream.headers, bytes(stream.body))
                    )
            elif isinstance(event, StreamReset):
                stream = self.streams.pop(event.stream_id or 0, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_exception(
                        ConnectionFailed(f"stream reset ({event.error_code!r})")
                    )
            elif isinstance(event, ConnectionTerminated):
                # GOAWAY: streams above the last one the server processed were not; the
                # others may still be answered before the socket closes.
                self.closed = True
                last = event.last_stream_id or 0
                for stream_id in [s for s in self.streams if s > last]:
                    stream = self.streams.pop(stream_id)
                    if not stream.future.done():
                        stream.future.set_exception(ConnectionFailed("GOAWAY"))
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self.window_opened.set()
                if isinstance(event, RemoteSettingsChanged):
                    self.settled.set()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost.set()
        self._fail_all(ConnectionFailed(f"connection lost ({exc or 'closed'})"))
        self.window_opened.set()
        self.settled.set()

    # --- requests, from coroutines on the same loop --------------------------------------

    def has_room(self) -> bool:
        limit = self.h2.remote_settings.max_concurrent_streams
        return not self.closed and self.settled.is_set() and len(self.streams) < limit

    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        if self.closed:
            raise ConnectionFailed("connection closing")
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        try:
            self.h2.send_headers(stream_id, headers)
            await self._send_body(stream_id, body)
            return await stream.future
        except asyncio.CancelledError:
            if self.streams.pop(stream_id, None) is not None and not self.closed:
                try:
                    self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                    self._flush()
                except H2Error:
                    pass
            raise
        except ConnectionFailed:  # closed under us while sending the body
            self.streams.pop(stream_id, None)
            if stream.future.done() and not stream.future.cancelled():
                stream.future.exception()  # failed with the connection; reported by the raise
            raise
        except H2Error as e:
            self.streams.pop(stream_id, None)
            if stream.future.done() and not stream.future.cancelled():
                stream.future.exception()
            if self.closed or self.h2.state_machine.state is ConnectionState.CLOSED:
                # The connection itself is broken: closed now, so no request waits on it.
                self.close()
                raise ConnectionFailed(str(e)) from e
            try:
                self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
                self._flush()
            except H2Error:
                self.close()  # cannot even end the stream: the connection goes
            raise StreamFailed(f"{type(e).__name__}: {e}") from e

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if self.closed:
                raise ConnectionFailed("connection closed while sending")
            size = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if size <= 0:
                self.window_opened.clear()
                self._flush()
                await self.window_opened.wait()
                continue
            self.h2.send_data(stream_id, view[:size].tobytes())
            view = view[size:]
        self.h2.end_stream(stream_id)
        self._flush()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.h2.close_connection()
                self._write()
            except H2Error:
                pass
            self.transport.close()

    def _flush(self) -> None:
        """What h2 has framed goes out once this turn of the loop is over: the frames of
        every request started in one turn (a notify's devices, the requests admitted as
        answers arrive) leave in one TLS write, one system call, instead of one each."""
        if not self._flush_due and self._loop is not None:
            self._flush_due = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._flush_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail_all(self, error: ConnectionFailed) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)


class H2Client:
    """Connections to one origin (`https://host[:port]`), opened as requests need them."""

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https origin: {origin!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.authority = parts.netloc.encode()
        self.ssl_context = ssl_context
        self.ssl_context.set_alpn_protocols(["h2"])
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        # Every connection until its socket is gone: taking requests, or closing.
        self._connections: list[_Connection] = []
        self._opening = asyncio.Lock()
        self._room = asyncio.Condition()
        self._waiting = 0  # requests waiting for a stream slot on a full set of connections

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        """POST `body`; a request whose connection broke before its answer is sent once more
        (as issue 3 asks of both senders: at least once, a duplicate only if the server had
        processed it and the answer was lost with the connection)."""
        request_headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", self.authority),
            (b":path", path.encode()),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            return await self._send(request_headers, body)
        except ConnectionFailed:
            return await self._send(request_headers, body)

    async def _send(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        connection = await self._connection()
        try:
            return await connection.request(headers, body)
        finally:
            if self._waiting:
                async with self._room:
                    self._room.notify()

    def _usable(self) -> list[_Connection]:
        """The connections taking requests; forgets those whose sockets are gone and closes
        those a GOAWAY ended (their socket may still be open)."""
        self._connections = [c for c in self._connections if not c.lost.is_set()]
        usable = []
        for connection in self._connections:
            if connection.closed:
                connection.close()
            else:
                usable.append(connection)
        return usable

    async def _connection(self) -> _Connection:
        while True:
            usable = self._usable()
            for connection in usable:
                if connection.has_room():
                    return connection
            if len(usable) < self.max_connections:
                async with self._opening:
                    # Another request may have opened one meanwhile.
                    if not any(c.has_room() for c in self._usable()):
                        await self._open()
                continue
            async with self._room:
                self._waiting += 1
                try:
                    await self._room.wait()
                finally:
                    self._waiting -= 1

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl_context
                )
        except TimeoutError:
            raise ConnectionFailed(f"connecting to {self.host}:{self.port} timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise ConnectionFailed(f"connecting to {self.host}:{self.port}: {e}") from e
        self._connections.append(connection)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            connection.closed = True
            transport.close()
            raise ConnectionFailed(f"{self.host}:{self.port} does not speak HTTP/2")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await connection.settled.wait()
        except TimeoutError:
            connection.close()
            raise ConnectionFailed(f"{self.host}:{self.port} sent no HTTP/2 SETTINGS") from None

    async def aclose(self) -> None:
        """Close every connection and wait (a second at most) until their sockets are gone."""
        sockets, self._connections = self._connections, []
        for connection in sockets:
            connection.close()
        pending = [c.lost.wait() for c in sockets if not c.lost.is_set()]
        if pending:
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*pending)
            except TimeoutError:
                for connection in sockets:
                    if connection.transport is not None:
                        connection.transport.abort()
