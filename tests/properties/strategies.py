"""Hypothesis strategies for well-formed and hostile requests to the bouncer's endpoints.

Endpoint-agnostic: an endpoint is described by its fields (`Field`: a name, a strategy of
well-formed values, whether a form carries it as JSON text), and `requests()` turns that into
whole HTTP requests: the fields well-formed, hostile or missing, hostile extra parameters,
and one of the body encodings a Zulip server or an attacker might send (form, form in
another charset, multipart with and without a boundary, JSON, broken bytes). Pointing them at
another endpoint (the notify endpoints, later) is one more list of `Field`s.

Strategies are built once (the factories are cached) and drawn from many times: building a
recursive strategy costs far more than drawing from it.
"""

import base64
import json
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import quote_plus

from hypothesis import strategies as st

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
CONTROL = ["\x00", "\r", "\n", "\r\n", "\t", " ", "\x7f", "\u2028", "\ufeff"]


class RawJson(str):
    """JSON text spliced into a body as it is: what json.dumps cannot produce (nesting deeper
    than the interpreter's stack, invalid JSON)."""


# --- Values ---------------------------------------------------------------------------------


@cache
def hostile_text(max_size: int = 24) -> st.SearchStrategy[str]:
    """Text with lone surrogates, NULs, line breaks and the rest of Unicode mixed in."""
    piece = st.one_of(
        st.characters(),
        st.sampled_from(SURROGATES),
        st.sampled_from(CONTROL),
        st.sampled_from(["[", "]", "%", "&", "=", '"', "\\", "/", ":", "@", "?", "#"]),
    )
    return st.lists(piece, max_size=max_size).map("".join)


@cache
def hostile_ints() -> st.SearchStrategy[int]:
    edges = [
        -1,
        0,
        2**15,
        2**31 - 1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        2**64,
        2**64 + 1,
        10**400,
        -(10**400),
    ]
    return st.one_of(st.sampled_from(edges), st.integers(min_value=-(2**80), max_value=2**80))


@cache
def deep_json() -> st.SearchStrategy[RawJson]:
    depth = st.sampled_from([33, 100, 990, 10_000])
    opener = st.sampled_from([("[", "]"), ('{"a":', "}")])
    return st.builds(lambda n, o: RawJson(o[0] * n + "1" + o[1] * n), depth, opener)


@cache
def broken_json() -> st.SearchStrategy[RawJson]:
    return st.sampled_from(
        [
            RawJson("{"),
            RawJson("[1,"),
            RawJson("NaN"),
            RawJson("Infinity"),
            RawJson("1e999"),
            RawJson("9" * 5000),
            RawJson('"\\ud800"'),
            RawJson('{"\\u0000": 1}'),
            RawJson("nul\x00l"),
        ]
    )


@cache
def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        hostile_ints(),
        st.floats(allow_nan=True, allow_infinity=True),
        hostile_text(),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(hostile_text(12), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


@cache
def hostile_values() -> st.SearchStrategy[Any]:
    """Anything a parameter might be sent as, none of it well-formed on purpose."""
    return st.one_of(json_values(), deep_json(), broken_json())


@cache
def parameter_names() -> st.SearchStrategy[str]:
    return st.one_of(
        hostile_text(20),
        st.sampled_from(["\ud800", "a\x00b", "", " ", "x" * 300, "realm_uuid\n", "__proto__"]),
    )


# --- Well-formed values of the protocol ---------------------------------------------------------


@cache
def uuids() -> st.SearchStrategy[str]:
    return st.builds(lambda: str(uuid.uuid4()))


@cache
def api_keys() -> st.SearchStrategy[str]:
    return st.builds(lambda: secrets.token_hex(32))


@cache
def hostnames() -> st.SearchStrategy[str]:
    labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
    names = st.builds(lambda a, b: f"{a}.{b}.example.net", labels, labels)
    bracketed = st.one_of(
        st.sampled_from(["[]", '["h"]', "[null]", "[1]", "[", "]", "[::1", "a]", "[::1]:443"]),
        st.builds(lambda t: f"[{t}]", hostile_text(10)),
    )
    with_port = st.builds(lambda n, p: f"{n}:{p}", names, st.integers(0, 99999))
    return st.one_of(names, with_port, bracketed, st.sampled_from(["127.0.0.1:9", "10.0.0.1"]))


@cache
def plain_hostnames() -> st.SearchStrategy[str]:
    labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
    return st.builds(lambda a, b: f"{a}.{b}.example.net", labels, labels)


@cache
def emails() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("admin@zulip.example.net"),
        st.builds(lambda h: f"admin@{h}", hostnames()),
        st.sampled_from(["a@example.com", "no-at-sign", "a@b@c", "a@\x00.net"]),
    )


@cache
def apns_tokens() -> st.SearchStrategy[str]:
    hex_token = st.binary(min_size=1, max_size=40).map(bytes.hex)
    return st.one_of(
        hex_token,
        hex_token.map(str.upper),
        st.builds(lambda t, c: t[:4] + c + t[4:], hex_token, st.sampled_from(CONTROL)),
    )


@cache
def fcm_tokens() -> st.SearchStrategy[str]:
    alphabet = string.ascii_letters + string.digits + ":_-"
    return st.one_of(
        st.text(alphabet, min_size=1, max_size=160),
        st.builds(lambda t, c: c + t, st.text(alphabet, max_size=20), st.sampled_from(CONTROL)),
    )


@cache
def tokens() -> st.SearchStrategy[str]:
    return st.one_of(apns_tokens(), fcm_tokens(), st.just("x" * 4097))


@cache
def small_ints() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=1000)


# --- Requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One parameter of an endpoint: its name and well-formed values. `json_text`: a form
    carries the value as JSON text (Zulip's Json[...] parameters, and every non-string)."""

    name: str
    valid: st.SearchStrategy[Any]
    json_text: bool = False
    # Strictly valid values, for the clean requests (default: `valid`, edge cases included).
    clean: st.SearchStrategy[Any] | None = None

    @property
    def clean_values(self) -> st.SearchStrategy[Any]:
        return self.valid if self.clean is None else self.clean


@dataclass(frozen=True)
class Request:
    method: str
    content_type: str | None
    body: bytes
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Request({self.method} ?{self.query[:200]!r} {self.content_type!r} "
            f"{self.body[:300]!r}{'...' if len(self.body) > 300 else ''})"
        )


def _utf8(text: str) -> bytes:
    # What a hostile client can put on the wire: surrogates as their (invalid) UTF-8 bytes.
    return text.encode("utf-8", "surrogatepass")


def _form_text(value: Any, json_text: bool) -> str:
    if isinstance(value, RawJson):
        return str(value)
    if isinstance(value, str) and not json_text:
        return value
    return json.dumps(value)


def _urlencoded(pairs: Sequence[tuple[str, str]], charset: str) -> bytes:
    if charset in ("utf-8", "bogus"):
        encoded = [(quote_plus(_utf8(k)), quote_plus(_utf8(v))) for k, v in pairs]
        return "&".join(f"{k}={v}" for k, v in encoded).encode()
    # A form in another charset: the raw text in that charset, as some clients send it.
    text = "&".join(f"{k}={v}" for k, v in pairs)
    return text.encode(charset, "surrogatepass" if charset == "utf-16" else "replace")


def _multipart(pairs: Sequence[tuple[str, str]], boundary: str) -> bytes:
    out = b""
    for name, value in pairs:
        out += b"--" + boundary.encode() + b"\r\n"
        out += b'Content-Disposition: form-data; name="' + _utf8(name) + b'"\r\n\r\n'
        out += _utf8(value) + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def _json_body(pairs: Sequence[tuple[str, Any]]) -> bytes:
    members = []
    for name, value in pairs:
        text = str(value) if isinstance(value, RawJson) else json.dumps(value)
        members.append(json.dumps(name) + ":" + text)
    return _utf8("{" + ",".join(members) + "}")


@st.composite
def parameters(
    draw: st.DrawFn, fields: Sequence[Field], *, clean: bool = False
) -> list[tuple[str, Any, bool]]:
    """(name, value, json_text) for each field present, plus hostile extra parameters;
    `clean`: every field well-formed and nothing else (the requests that should succeed)."""
    chosen: list[tuple[str, Any, bool]] = []
    if clean:
        return [
            (f.name, draw(f.valid if f.clean is None else f.clean), f.json_text) for f in fields
        ]
    for f in fields:
        kind = draw(st.sampled_from(["valid", "valid", "valid", "hostile", "missing"]))
        if kind == "missing":
            continue
        value = draw(f.valid if kind == "valid" else hostile_values())
        chosen.append((f.name, value, f.json_text))
    for name in draw(st.lists(parameter_names(), max_size=2)):
        chosen.append((name, draw(hostile_values()), False))
    return chosen


ENCODINGS = [
    "form",
    "form",
    "form",
    "form; charset=utf-16",
    "form; charset=latin-1",
    "form; charset=bogus",
    "multipart",
    "multipart without boundary",
    "multipart malformed",
    "json",
    "json",
    "json not an object",
    "bytes",
]


@st.composite
def requests(
    draw: st.DrawFn, fields: Sequence[Field], *, method: str = "POST", json_ok: bool = False
) -> Request:
    """A whole request to an endpoint with these fields. `json_ok`: the endpoint reads JSON
    bodies (its well-formed requests may be JSON); every endpoint gets them regardless.
    A third of the requests are clean: well-formed fields, encoded as a Zulip server does."""
    clean = draw(st.sampled_from([True, False, False]))
    params = draw(parameters(fields, clean=clean))
    if method == "GET":
        pairs = [(n, _form_text(v, j)) for n, v, j in params]
        return Request("GET", None, b"", query=_urlencoded(pairs, "utf-8").decode())
    encoding = ("json" if json_ok else "form") if clean else draw(st.sampled_from(ENCODINGS))
    form_pairs = [(n, _form_text(v, j)) for n, v, j in params]
    urlencoded = "application/x-www-form-urlencoded"
    if encoding == "form":
        return Request(method, urlencoded, _urlencoded(form_pairs, "utf-8"))
    if encoding.startswith("form; charset="):
        charset = encoding.split("=", 1)[1]
        body = _urlencoded(form_pairs, charset)
        return Request(method, f"{urlencoded}; charset={charset}", body)
    if encoding == "multipart":
        boundary = draw(st.sampled_from(["xYzZY", "b", "----WebKitFormBoundary7MA4YWxkTrZu0gW"]))
        body = _multipart(form_pairs, boundary)
        return Request(method, f"multipart/form-data; boundary={boundary}", body)
    if encoding == "multipart without boundary":
        return Request(method, "multipart/form-data", _multipart(form_pairs, "xYzZY"))
    if encoding == "multipart malformed":
        boundary = draw(st.sampled_from(["", "\x00", "b", '"', "a" * 300]))
        body = draw(st.binary(max_size=200))
        return Request(method, f"multipart/form-data; boundary={boundary}", body)
    if encoding == "json":
        return Request(method, "application/json", _json_body([(n, v) for n, v, _ in params]))
    if encoding == "json not an object":
        value = draw(hostile_values())
        text = str(value) if isinstance(value, RawJson) else json.dumps(value)
        return Request(method, "application/json", _utf8(text))
    content_type = draw(st.sampled_from([urlencoded, "application/json", "text/plain", "", "*/*"]))
    return Request(method, content_type, draw(st.binary(max_size=300)))


def authorizations(uuid_: str, key: str) -> st.SearchStrategy[str | None]:
    """Mostly the server's own credentials; sometimes wrong, garbled or missing ones."""
    good = "Basic " + base64.b64encode(f"{uuid_}:{key}".encode()).decode()

    def basic(role: str, secret: str) -> str:
        return "Basic " + base64.b64encode(_utf8(f"{role}:{secret}")).decode()

    bad = st.one_of(
        st.none(),
        st.builds(basic, st.just(uuid_), hostile_text(70)),
        st.builds(basic, hostile_text(40), st.just(key)),
        st.sampled_from(["Basic", "Basic !!!", "Bearer x", "Basic " + "A" * 10_000, ""]),
    )
    return st.one_of(st.just(good), st.just(good), st.just(good), st.just(good), bad)
