"""A fake APNs provider API: HTTP/2 over TLS, verifying ES256 provider tokens like Apple.

In process (tests): `FakeApns(...).start()` runs it on its own event loop thread.
As a process (benchmark): `python -m tests.fakes.apns --port P --latency-ms 20-60 ...`.

Answers are scriptable per device token (`script(token, Answer(...), ...)`, consumed in
order, then 200s); `goaway_after` sends GOAWAY after that many requests on the first
connection and drops it, leaving its later streams unanswered.
"""

import argparse
import json
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.h2server import H2Server, Request, Response, write_count

TOKEN_MAX_AGE_SECONDS = 3600
# Apple's payload limits, enforced as Apple does (413 PayloadTooLarge).
MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120


@dataclass(frozen=True)
class Answer:
    status: int = 200
    reason: str | None = None
    hang: bool = False  # never answer this stream
    reset: bool = False  # reset this stream instead of answering
    drop: bool = False  # drop the connection instead of answering
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


class FakeApns(H2Server):
    name = "fake-apns"

    def __init__(
        self,
        *,
        keys: list[SigningKey] | None = None,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        max_streams: int = 1000,
        client_ca_file: str | None = None,
        topics: set[str] | None = None,
        keep_received: bool = True,
    ) -> None:
        super().__init__(
            latency_ms=latency_ms, max_streams=max_streams, client_ca_file=client_ca_file
        )
        self.keys = {k.key_id: k for k in keys or []}
        self.topics = topics
        self.received: list[Received] = []
        # The benchmark's process counts and keeps nothing: a record per request (its body
        # parsed, kept for the process's life) was CPU and memory spent on nothing there.
        self.keep_received = keep_received
        self.delivered = 0
        # Verified provider tokens (`_verify`).
        self._verified: dict[str, tuple[SigningKey, dict[str, Any]]] = {}
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._records: dict[int, Received] = {}

    # --- scripting and inspection (any thread) ---------------------------------------------

    def script(self, token: str, *answers: Answer) -> None:
        with self.lock:
            self._scripts[token.lower()].extend(answers)

    def _next_answer(self, token: str) -> Answer:
        with self.lock:
            queue = self._scripts.get(token.lower())
            return queue.popleft() if queue else Answer()

    def requests_for(self, token: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.token.lower() == token.lower()]

    # --- Apple's side ---------------------------------------------------------------------------

    def authorize(self, headers: dict[str, str], has_client_cert: bool) -> Answer | None:
        """None when authorized, else Apple's 403 answer."""
        if has_client_cert:
            return None
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return Answer(403, "MissingProviderToken")
        verified = self._verify(auth.removeprefix("bearer "))
        if verified is None:
            return Answer(403, "InvalidProviderToken")
        key, claims = verified
        if claims.get("iss") != key.team_id:
            return Answer(403, "InvalidProviderToken")
        if time.time() - int(claims.get("iat", 0)) > TOKEN_MAX_AGE_SECONDS:
            return Answer(403, "ExpiredProviderToken")
        return None

    def _verify(self, token: str) -> tuple[SigningKey, dict[str, Any]] | None:
        """The token's key and claims if its signature holds, verified once per token (and
        again if its key changes), as Apple caches a token it has verified."""
        cached = self._verified.get(token)
        if cached is not None and self.keys.get(cached[0].key_id) is cached[0]:
            return cached
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid", ""))
            if key is None or header.get("alg") != "ES256":
                return None
            claims = jwt.decode(
                token, key.public_key, algorithms=["ES256"], options={"verify_iat": False}
            )
        except jwt.PyJWTError:
            return None
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified[token] = (key, claims)
        return key, claims

    def handle(self, request: Request) -> Response | None:
        headers = request.headers
        token = request.path.removeprefix("/3/device/")
        if self.keep_received:
            try:
                payload = json.loads(request.body) if request.body else {}
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
            with self.lock:
                self.received.append(record)
                self._records[id(request)] = record
        answer = self.authorize(headers, request.has_client_cert)
        if answer is None and not headers.get("apns-topic"):
            answer = Answer(400, "MissingTopic")
        if answer is None and self.topics is not None and headers["apns-topic"] not in self.topics:
            answer = Answer(400, "TopicDisallowed")
        if answer is None:
            limit = (
                MAX_VOIP_PAYLOAD_BYTES
                if headers.get("apns-push-type") == "voip"
                else (MAX_PAYLOAD_BYTES)
            )
            if len(request.body) > limit:
                answer = Answer(413, "PayloadTooLarge")
        if answer is None:
            answer = self._next_answer(token)
        if answer.hang:
            return None
        if answer.reset or answer.drop:
            return Response(0, reset=answer.reset, drop=answer.drop)
        response_headers = [("apns-id", headers.get("apns-id") or str(uuid.uuid4()))]
        if answer.status == 200:
            return Response(200, response_headers)
        reason: dict[str, Any] = {"reason": answer.reason or "InternalServerError"}
        if answer.timestamp is not None:
            reason["timestamp"] = answer.timestamp
        return Response(
            answer.status,
            [*response_headers, ("content-type", "application/json")],
            json.dumps(reason).encode(),
        )

    def sent(self, request: Request, response: Response) -> None:
        with self.lock:
            record = self._records.pop(id(request), None)
            if record is not None:
                # Recorded only once sent: a status the client never saw was not an answer.
                record.status = response.status
            if response.status == 200:
                self.delivered += 1


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake APNs for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", default="0-0", help="uniform range, e.g. 20-60")
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--team-id", required=True)
    parser.add_argument("--public-key-file", required=True, help="PEM of the .p8 key's public half")
    parser.add_argument("--stats-file", help="written every 0.2 s with the delivered count")
    args = parser.parse_args()
    lo, hi = (float(x) for x in args.latency_ms.split("-"))
    with open(args.public_key_file, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    key = SigningKey(key_id=args.key_id, team_id=args.team_id, private_pem="", public_key=public)
    fake = FakeApns(keys=[key], latency_ms=(lo, hi), keep_received=False)
    fake.loop_factory = uvloop.new_event_loop
    fake.start(args.port)
    while True:
        time.sleep(0.2)
        if args.stats_file:
            write_count(args.stats_file, fake.delivered)


if __name__ == "__main__":
    main()
