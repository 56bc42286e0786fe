"""The bouncer's cryptography (pure: no models, no I/O).

- Private halves of bouncer key pairs are stored sealed with BOUNCER_KEY_ENCRYPTION_KEY
  (XSalsa20-Poly1305 secret box), so a database dump alone reveals no key.
- Phones seal a PushRegistration to a bouncer public key (libsodium sealed box); only the
  bouncer can open it.
"""

import base64
import binascii
import hashlib
import json
import re
from typing import Literal, Self

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# \Z, not $: $ also matches before a trailing newline, which would reach the apns-topic header.
APNS_APP_ID_RE = re.compile(r"^[.a-zA-Z0-9-]+\Z")
# bytes.fromhex would also take spaces between the hex pairs; a token is sent in a URL path
# (APNs) or a JSON body, and must never carry whitespace or line breaks there.
APNS_TOKEN_RE = re.compile(r"^[0-9a-fA-F]+\Z")
TOKEN_MAX_LENGTH = 4096
# A sealed PushRegistration is a few hundred bytes; anything far larger is not one.
MAX_SEALED_LENGTH = 16 * 1024


class InvalidRegistration(Exception):
    """The sealed registration cannot be opened or is not a valid PushRegistration."""


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def b64decode_strict(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


# --- Key pairs at rest -----------------------------------------------------------------------


def _box(encryption_key_b64: str) -> SecretBox:
    return SecretBox(b64decode_strict(encryption_key_b64))


def generate_key_pair() -> tuple[str, PrivateKey]:
    private = PrivateKey.generate()
    return b64encode(bytes(private.public_key)), private


def seal_private_key(private: PrivateKey, *, encryption_key_b64: str) -> bytes:
    return bytes(_box(encryption_key_b64).encrypt(bytes(private)))


def open_private_key(sealed: bytes, *, encryption_key_b64: str) -> PrivateKey:
    return PrivateKey(_box(encryption_key_b64).decrypt(sealed))


def private_key_from_b64(private_b64: str) -> PrivateKey:
    """A private key in Zulip's format (standard base64 of 32 bytes)."""
    try:
        raw = b64decode_strict(private_b64)
    except (binascii.Error, ValueError):
        raise ValueError("private key is not base64") from None
    if len(raw) != 32:
        raise ValueError("private key is not 32 bytes")
    return PrivateKey(raw)


def public_key_of(private: PrivateKey) -> str:
    return b64encode(bytes(private.public_key))


# --- Token ids ---------------------------------------------------------------------------------


def token_id_int(token: str) -> int:
    """Zulip's compute_token_id_int: the first 8 bytes of SHA-256(token), signed big-endian."""
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big", signed=True)


def token_id_b64(token_id: int) -> str:
    return b64encode(token_id.to_bytes(8, "big", signed=True))


def token_format_error(token: str, kind: Literal["apns", "fcm"]) -> str | None:
    """Why a device token cannot be one, or None: APNs tokens are hex; no token of either kind
    holds whitespace, line breaks or other control characters (they would reach a header or
    the request path sent to APNs, or FCM's JSON, as they are)."""
    if kind == "apns":
        return None if APNS_TOKEN_RE.match(token) else "APNs tokens are hex"
    if not token.isprintable() or any(c.isspace() for c in token):
        return "FCM tokens hold no whitespace or control characters"
    return None


# --- PushRegistration --------------------------------------------------------------------------


class PushRegistration(BaseModel):
    """What a phone seals: its token, its kind, its app and when it sealed it."""

    model_config = ConfigDict(extra="ignore", strict=True)

    token: str = Field(min_length=1, max_length=TOKEN_MAX_LENGTH)
    token_kind: Literal["apns", "fcm"]
    ios_app_id: str | None = None
    # Seconds since the epoch; bounded so that arithmetic on it never overflows a float.
    timestamp: int = Field(ge=0, le=2**53)

    @model_validator(mode="after")
    def check_kind_rules(self) -> Self:
        if self.token_kind == "apns":
            if self.ios_app_id is None or not APNS_APP_ID_RE.match(self.ios_app_id):
                raise ValueError("APNs registrations need a valid ios_app_id")
        elif self.ios_app_id is not None:
            raise ValueError("FCM registrations have no ios_app_id")
        error = token_format_error(self.token, self.token_kind)
        if error is not None:
            raise ValueError(error)
        return self


def open_registration(sealed_b64: str, private: PrivateKey) -> PushRegistration:
    """Open and validate a sealed PushRegistration; any failure is InvalidRegistration."""
    if len(sealed_b64) > MAX_SEALED_LENGTH:
        raise InvalidRegistration("too long")
    try:
        ciphertext = b64decode_strict(sealed_b64)
        plaintext = SealedBox(private).decrypt(ciphertext)
        return PushRegistration.model_validate_json(plaintext)
    except (binascii.Error, ValueError, TypeError, CryptoError, ValidationError) as e:
        # ValidationError is a ValueError; named for the reader. Never include plaintext.
        raise InvalidRegistration(type(e).__name__) from None


def seal_registration(registration: dict[str, object], public_key_b64: str) -> str:
    """What a phone does (tests and the benchmark use it)."""
    public = PublicKey(b64decode_strict(public_key_b64))
    return b64encode(SealedBox(public).encrypt(json.dumps(registration).encode()))
