"""A fake APNs provider API: HTTP/2 over TLS, verifying ES256 provider tokens like Apple.

In process (tests): `FakeApns(...).start()` runs it on its own event loop thread.
As a process (benchmark): `python -m tests.fakes.apns --port P --latency-ms 20-60 ...`.

Answers are scriptable per device token (`script(token, Answer(...), ...)`, consumed in
order, then 200s); `goaway_after` sends GOAWAY after that many requests on the first
connection and drops it, leaving its later streams unanswered.
"""

import argparse
import asyncio
import json
import random
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError

from tests.fakes.tls import loopback_tls

TOKEN_MAX_AGE_SECONDS = 3600


@dataclass(frozen=True)
class Answer:
    status: int = 200
    reason: str | None = None
    hang: bool = False  # never answer this stream
    timestamp: int | None = None  # with 410


@dataclass
class Received:
    token: str
    headers: dict[str, str]
    body: dict[str, Any]
    jwt: str | None
    at: float
    status: int = 0  # the status actually sent; 0 while (or if never) answered


@dataclass
class SigningKey:
    """A team's .p8 key: the sender gets the PEM, the fake keeps the public half."""

    key_id: str
    team_id: str
    private_pem: str = field(repr=False)
    public_key: Any = field(repr=False)

    @classmethod
    def generate(cls, *, key_id: str = "ABC123DEFG", team_id: str = "TEAM123456") -> "SigningKey":
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cls(key_id=key_id, team_id=team_id, private_pem=pem, public_key=private.public_key())


class FakeApns:
    def __init__(
        self,
        *,
        keys: list[SigningKey] | None = None,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        max_streams: int = 1000,
        client_ca_file: str | None = None,
        topics: set[str] | None = None,
    ) -> None:
        self.keys = {k.key_id: k for k in keys or []}
        self.latency_ms = latency_ms
        self.max_streams = max_streams
        self.client_ca_file = client_ca_file
        self.topics = topics
        self.received: list[Received] = []
        self.delivered = 0
        self.goaway_after: int | None = None
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.connections = 0
        self._connections: list[_Connection] = []

    # --- scripting and inspection (any thread) ---------------------------------------------

    def script(self, token: str, *answers: Answer) -> None:
        with self._lock:
            self._scripts[token.lower()].extend(answers)

    def _next_answer(self, token: str) -> Answer:
        with self._lock:
            queue = self._scripts.get(token.lower())
            return queue.popleft() if queue else Answer()

    def requests_for(self, token: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.token.lower() == token.lower()]

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- lifecycle ----------------------------------------------------------------------------

    def _ssl_context(self) -> Any:
        import ssl

        context = loopback_tls().server_context(alpn=["h2"])
        if self.client_ca_file:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cafile=self.client_ca_file)
        return context

    def start(self, port: int = 0) -> "FakeApns":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
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

        self._thread = threading.Thread(target=run, name="fake-apns", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        server, loop = self._server, self._loop

        connections = self._connections

        async def shutdown() -> None:
            server.close()
            for connection in connections:
                if connection.transport is not None:
                    connection.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(5)
        loop.close()

    # --- Apple's checks ---------------------------------------------------------------------

    def authorize(self, headers: dict[str, str], has_client_cert: bool) -> Answer | None:
        """None when authorized, else Apple's 403 answer."""
        if has_client_cert:
            return None
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return Answer(403, "MissingProviderToken")
        token = auth.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid", ""))
            if key is None or header.get("alg") != "ES256":
                return Answer(403, "InvalidProviderToken")
            claims = jwt.decode(
                token, key.public_key, algorithms=["ES256"], options={"verify_iat": False}
            )
        except jwt.PyJWTError:
            return Answer(403, "InvalidProviderToken")
        if claims.get("iss") != key.team_id:
            return Answer(403, "InvalidProviderToken")
        if time.time() - int(claims.get("iat", 0)) > TOKEN_MAX_AGE_SECONDS:
            return Answer(403, "ExpiredProviderToken")
        return None


class _Connection(asyncio.Protocol):
    def __init__(self, fake: FakeApns) -> None:
        self.fake = fake
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.count = 0
        self.closed = False
        self.has_client_cert = False
        self.last_answered = 0
        self.tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        self.has_client_cert = bool(ssl_object and ssl_object.getpeercert())
        self.fake.connections += 1
        self.fake._connections.append(self)
        self.conn.initiate_connection()
        self.conn.update_settings({0x3: self.fake.max_streams})  # MAX_CONCURRENT_STREAMS
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
        fake = self.fake
        first_connection = fake._connections[0] is self
        if fake.goaway_after is not None and first_connection and self.count > fake.goaway_after:
            # Apple closing a connection: GOAWAY naming the last stream it answered, then
            # the connection is gone; the streams still waiting are never answered (and
            # were not delivered: the client must send them again).
            self.conn.close_connection(last_stream_id=self.last_answered)
            self._flush()
            if self.transport:
                self.transport.close()
            self.closed = True
            return
        token = headers.get(":path", "").removeprefix("/3/device/")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        auth = headers.get("authorization", "")
        record = Received(
            token=token,
            headers=headers,
            body=payload,
            jwt=auth.removeprefix("bearer ") if auth else None,
            at=time.time(),
        )
        with fake._lock:
            fake.received.append(record)
        answer = fake.authorize(headers, self.has_client_cert)
        if (
            answer is None
            and fake.topics is not None
            and headers.get("apns-topic") not in fake.topics
        ):
            answer = Answer(400, "TopicDisallowed")
        if answer is None and not headers.get("apns-topic"):
            answer = Answer(400, "MissingTopic")
        if answer is None:
            answer = fake._next_answer(token)
        if answer.hang:
            return
        task = asyncio.ensure_future(self._answer(stream_id, headers, answer, record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(
        self, stream_id: int, headers: dict[str, str], answer: Answer, record: Received
    ) -> None:
        lo, hi = self.fake.latency_ms
        if hi > 0:
            await asyncio.sleep(random.uniform(lo, hi) / 1000)
        if self.closed:
            return
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        response_headers = [(":status", str(answer.status)), ("apns-id", apns_id)]
        try:
            if answer.status == 200:
                self.conn.send_headers(stream_id, response_headers, end_stream=True)
                self.fake.delivered += 1
            else:
                reason: dict[str, Any] = {"reason": answer.reason or "InternalServerError"}
                if answer.timestamp is not None:
                    reason["timestamp"] = answer.timestamp
                data = json.dumps(reason).encode()
                self.conn.send_headers(
                    stream_id,
                    [*response_headers, ("content-type", "application/json")],
                )
                self.conn.send_data(stream_id, data, end_stream=True)
        except ProtocolError:
            return
        # Recorded only once sent: a status the client never saw was not an answer.
        record.status = answer.status
        self.last_answered = max(self.last_answered, stream_id)
        self._flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake APNs for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", default="0-0", help="uniform range, e.g. 20-60")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--team-id", required=True)
    parser.add_argument("--public-key-file", required=True, help="PEM of the .p8 key's public half")
    parser.add_argument("--stats-file", help="written every second with the delivered count")
    args = parser.parse_args()
    lo, hi = (float(x) for x in args.latency_ms.split("-"))
    with open(args.public_key_file, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    key = SigningKey(key_id=args.key_id, team_id=args.team_id, private_pem="", public_key=public)
    fake = FakeApns(keys=[key], latency_ms=(lo, hi)).start(args.port)
    while True:
        time.sleep(1)
        if args.stats_file:
            with open(args.stats_file, "w") as f:
                f.write(str(fake.delivered))


if __name__ == "__main__":
    main()
