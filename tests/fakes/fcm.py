"""A fake FCM HTTP v1 API with Google's OAuth token endpoint, over TLS HTTP/2.

OAuth: `POST /token` verifies the service account's RS256 assertion (issuer, Google's
audience, the firebase.messaging scope, expiry) and issues an access token. FCM:
`POST /v1/projects/<id>/messages:send` checks the bearer token, records the message and
answers `{"name": ...}` or a scripted error in FCM's real error shape.

In process (tests) or `python -m tests.fakes.fcm --port P --latency-ms 30-80
--service-account-file F` (benchmark).
"""

import argparse
import json
import secrets
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.h2server import H2Server, Request, Response, write_count

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# errorCode -> (HTTP status, google.rpc status)
ERRORS = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "INTERNAL": (500, "INTERNAL"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
}


# Google's limit on a message's data, keys and values counted.
MAX_DATA_BYTES = 4096


@dataclass(frozen=True)
class FcmAnswer:
    error: str | None = None  # an errorCode of ERRORS; None = success
    retry_after: str | None = None
    hang: bool = False


@dataclass
class ServiceAccount:
    project_id: str
    client_email: str
    private_pem: str
    public_key: Any

    @classmethod
    def generate(cls, project_id: str = "bouncer-test") -> "ServiceAccount":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cls(
            project_id=project_id,
            client_email=f"bouncer@{project_id}.iam.gserviceaccount.com",
            private_pem=pem,
            public_key=private.public_key(),
        )

    def file_content(self, token_uri: str) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": "fake-key-1",
                "private_key": self.private_pem,
                "client_email": self.client_email,
                "client_id": "1",
                "token_uri": token_uri,
            }
        )


class FakeFcm(H2Server):
    name = "fake-fcm"

    def __init__(
        self,
        *,
        account: ServiceAccount,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        expires_in: int = 3600,
    ) -> None:
        super().__init__(latency_ms=latency_ms)
        self.account = account
        self.expires_in = expires_in
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.messages: list[dict[str, Any]] = []
        self.delivered = 0
        self.answered: Counter[str] = Counter()  # 200s sent, by token
        self._scripts: dict[str, deque[FcmAnswer]] = defaultdict(deque)

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    def script(self, token: str, *answers: FcmAnswer) -> None:
        with self.lock:
            self._scripts[token].extend(answers)

    def sent(self, request: Request, response: Response) -> None:
        # Counted once the answer is on its way: a message whose connection was cut before
        # its 200 went out was not delivered, and the client rightly sends it again.
        if response.status == 200 and request.path.endswith("/messages:send"):
            token = json.loads(request.body)["message"].get("token", "")
            with self.lock:
                self.delivered += 1
                self.answered[token] += 1

    def messages_for(self, token: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m.get("token") == token]

    def handle(self, request: Request) -> Response | None:
        if request.path == "/token" and request.method == "POST":
            return self._token(request)
        if request.path.startswith("/v1/projects/") and request.path.endswith("/messages:send"):
            return self._send(request)
        return _json(404, {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}})

    def _token(self, request: Request) -> Response:
        form = parse_qs(request.body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return _json(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(
                form.get("assertion", [""])[0],
                self.account.public_key,
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=self.account.client_email,
            )
        except jwt.PyJWTError as e:
            return _json(400, {"error": "invalid_grant", "error_description": str(e)})
        if SCOPE not in str(claims.get("scope", "")).split():
            return _json(400, {"error": "invalid_scope"})
        token = "ya29." + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
            self.token_requests += 1
        return _json(
            200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def _send(self, request: Request) -> Response | None:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens:
            return _error("UNAUTHENTICATED_TOKEN", 401, "UNAUTHENTICATED")
        project = request.path.removeprefix("/v1/projects/").removesuffix("/messages:send")
        if project != self.account.project_id:
            return _error("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED")
        try:
            message = json.loads(request.body)["message"]
        except (ValueError, KeyError, TypeError):
            return _error("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT")
        data = message.get("data") or {}
        if (
            not isinstance(data, dict)
            or sum(len(str(k).encode()) + len(str(v).encode()) for k, v in data.items())
            > MAX_DATA_BYTES
        ):
            return _error("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT")
        with self.lock:
            self.messages.append(message)
            queue = self._scripts.get(message.get("token", ""))
            answer = queue.popleft() if queue else FcmAnswer()
        if answer.hang:
            return None
        if answer.error is None:
            return _json(200, {"name": f"projects/{project}/messages/{uuid.uuid4()}"})
        status, rpc_status = ERRORS[answer.error]
        response = _error(answer.error, status, rpc_status)
        if answer.retry_after is not None:
            response.headers.append(("retry-after", answer.retry_after))
        return response


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status, [("content-type", "application/json")], json.dumps(body).encode())


def _error(error_code: str, status: int, rpc_status: str) -> Response:
    details = (
        []
        if error_code.startswith("UNAUTHENTICATED")
        else [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}]
    )
    return _json(
        status,
        {
            "error": {
                "code": status,
                "message": f"{error_code}",
                "status": rpc_status,
                "details": details,
            }
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake FCM for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", default="0-0")
    parser.add_argument("--service-account-file", required=True, help="written for the bouncer")
    parser.add_argument("--stats-file")
    args = parser.parse_args()
    lo, hi = (float(x) for x in args.latency_ms.split("-"))
    account = ServiceAccount.generate()
    fake = FakeFcm(account=account, latency_ms=(lo, hi))
    fake.loop_factory = uvloop.new_event_loop
    fake.start(args.port)
    Path(args.service_account_file).write_text(account.file_content(fake.token_uri))
    while True:
        time.sleep(0.2)
        if args.stats_file:
            write_count(args.stats_file, fake.delivered)


if __name__ == "__main__":
    main()
